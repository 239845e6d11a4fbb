// The AVX2 + FMA row families: the elementwise passes of the LSTM cell and the softmax
// reductions of the output layer, on eight float lanes. See kernels/reference/row_spans.h
// for the interface: each function handles a prefix of its range and returns where it
// stopped; the caller's scalar loop (the same arithmetic) finishes the range.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "isa.h"
#include "kernels/avx2/vector_math.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace row_spans {

// out[j] = fn(in[j] + bias[j]) (bias unused without kBias): four vectors of eight at a
// time, then single vectors. fn runs lanes:: on an array of vectors.
template <bool kBias, class VectorFn>
inline int64_t activate(int64_t n, const float* in, const float* bias, float* out, VectorFn fn) {
    int64_t j = 0;
    const auto input = [&](int64_t at) {
        const __m256 x = _mm256_loadu_ps(in + at);
        return kBias ? _mm256_add_ps(x, _mm256_loadu_ps(bias + at)) : x;
    };
    for (; j + 32 <= n; j += 32) {
        __m256 v[4] = {input(j), input(j + 8), input(j + 16), input(j + 24)};
        fn(v);
        for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + j + 8 * k, v[k]);
    }
    for (; j + 8 <= n; j += 8) {
        __m256 v[1] = {input(j)};
        fn(v);
        _mm256_storeu_ps(out + j, v[0]);
    }
    return j;
}

template <bool kBias>
inline int64_t sigmoid(int64_t n, const float* in, const float* bias, float* out) {
    return activate<kBias>(n, in, bias, out, [](auto& v) { lanes::sigmoid(v); });
}

template <bool kBias>
inline int64_t tanh(int64_t n, const float* in, const float* bias, float* out) {
    return activate<kBias>(n, in, bias, out, [](auto& v) { lanes::tanh_approx(v); });
}

// c = f*c_prev + i*g; h = o*tanh(c), sixteen units at a time. c may be c_prev.
inline int64_t lstm_state(int64_t H, const float* i, const float* f, const float* g, const float* o,
                          const float* c_prev, float* c, float* h) {
    int64_t j = 0;
    for (; j + 16 <= H; j += 16) {
        __m256 cj[2], t[2];
        for (int k = 0; k < 2; ++k) {
            const int64_t u = j + 8 * k;
            cj[k] = _mm256_fmadd_ps(_mm256_loadu_ps(f + u), _mm256_loadu_ps(c_prev + u),
                                    _mm256_mul_ps(_mm256_loadu_ps(i + u), _mm256_loadu_ps(g + u)));
            _mm256_storeu_ps(c + u, cj[k]);
            t[k] = cj[k];
        }
        lanes::tanh_approx(t);
        for (int k = 0; k < 2; ++k) _mm256_storeu_ps(h + j + 8 * k, _mm256_mul_ps(_mm256_loadu_ps(o + j + 8 * k), t[k]));
    }
    return j;
}

#if !defined(FASTLM_ROW_SPANS_SOFTMAX_ELSEWHERE)  // the AVX-512 set has its own (kernels/avx512/row_spans.h)

// z <- z + bias over a prefix of the row, its maximum folded into lanes[0..8).
// GCC leaves the caller's lane loop scalar for the maximum. max_ps(x, m) is exactly
// x > m ? x : m, NaN included (a NaN x never enters).
inline int64_t add_bias_max(float* z, const float* bias, int64_t V, float* lanes) {
    int64_t v = 0;
    __m256 peaks[4] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY),
                       _mm256_set1_ps(-INFINITY)};
    for (; v + 32 <= V; v += 32)
        for (int k = 0; k < 4; ++k) {
            const __m256 x = _mm256_add_ps(_mm256_loadu_ps(z + v + 8 * k), _mm256_loadu_ps(bias + v + 8 * k));
            _mm256_storeu_ps(z + v + 8 * k, x);
            peaks[k] = _mm256_max_ps(x, peaks[k]);
        }
    const __m256 peak = _mm256_max_ps(_mm256_max_ps(peaks[0], peaks[1]), _mm256_max_ps(peaks[2], peaks[3]));
    _mm256_storeu_ps(lanes, _mm256_max_ps(peak, _mm256_loadu_ps(lanes)));
    return v;
}

// The maximum of a prefix of z (no bias, nothing stored), folded into lanes[0..8): the
// adaptive softmax's rows, whose head bias (if any) is added before.
inline int64_t row_max(const float* z, int64_t V, float* lanes) {
    int64_t v = 0;
    __m256 peaks[4] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY),
                       _mm256_set1_ps(-INFINITY)};
    for (; v + 32 <= V; v += 32)
        for (int k = 0; k < 4; ++k) peaks[k] = _mm256_max_ps(_mm256_loadu_ps(z + v + 8 * k), peaks[k]);
    const __m256 peak = _mm256_max_ps(_mm256_max_ps(peaks[0], peaks[1]), _mm256_max_ps(peaks[2], peaks[3]));
    _mm256_storeu_ps(lanes, _mm256_max_ps(peak, _mm256_loadu_ps(lanes)));
    return v;
}

// exp(z - peak) over z[begin, end) from begin on, summed into lanes[0..8) (kStore: the
// exps replace z), four vectors at a time with their exps' chains interleaved.
template <bool kStore>
inline int64_t exp_sum(float* z, int64_t begin, int64_t end, float peak, float* lanes) {
    int64_t v = begin;
    __m256 sums[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256 shift = _mm256_set1_ps(peak);
    for (; v + 32 <= end; v += 32) {
        __m256 e[4];
        for (int k = 0; k < 4; ++k) e[k] = _mm256_sub_ps(_mm256_loadu_ps(z + v + 8 * k), shift);
        lanes::exp_approx(e);
        for (int k = 0; k < 4; ++k) {
            if (kStore) _mm256_storeu_ps(z + v + 8 * k, e[k]);
            sums[k] = _mm256_add_ps(sums[k], e[k]);
        }
    }
    const __m256 sum8 = _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3]));
    _mm256_storeu_ps(lanes, _mm256_add_ps(sum8, _mm256_loadu_ps(lanes)));
    return v;
}

#endif  // FASTLM_ROW_SPANS_SOFTMAX_ELSEWHERE

}  // namespace row_spans
}  // namespace FASTLM_ISA
}  // namespace fastlm
