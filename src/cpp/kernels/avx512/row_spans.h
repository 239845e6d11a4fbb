// The AVX-512 row families: the AVX2 ones (kernels/avx2/row_spans.h) compiled for this set,
// except the output layer's softmax reductions, here on sixteen lanes. Each keeps the AVX2
// family's eight running lanes to the bit: the AVX2 loop's four 8-lane accumulators a0..a3
// (a_k takes elements v + 8k .. v + 8k + 7 of every 32) are two 16-lane ones, [a0 | a1] and
// [a2 | a3], updated in the same order, and reduced at the end as (a0 op a1) op (a2 op a3).
// Each element's exp is the 8-lane one's (kernels/avx512/vector_math.h). So the softmax
// sums, and every result behind them, do not depend on which of the two families ran.
// Twice the lanes per instruction: training's row pass (add_bias_max, exp_sum<true>) ran
// 4 M exps per zaremba-small step on eight lanes.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "isa.h"
#include "kernels/avx512/vector_math.h"

#define FASTLM_ROW_SPANS_SOFTMAX_ELSEWHERE  // kernels/avx2/row_spans.h: the rest
#include "kernels/avx2/row_spans.h"
#undef FASTLM_ROW_SPANS_SOFTMAX_ELSEWHERE

namespace fastlm {
namespace FASTLM_ISA {
namespace row_spans {

namespace detail {

// The AVX2 family's final reduction of [a0 | a1] and [a2 | a3] into lanes[0..8):
// lanes = op(op(op(a0, a1), op(a2, a3)), lanes).
template <class Op>
inline void fold_into_lanes(__m512 a01, __m512 a23, float* lanes, Op op) {
    const __m256 a0 = _mm512_castps512_ps256(a01), a1 = _mm512_extractf32x8_ps(a01, 1);
    const __m256 a2 = _mm512_castps512_ps256(a23), a3 = _mm512_extractf32x8_ps(a23, 1);
    _mm256_storeu_ps(lanes, op(op(op(a0, a1), op(a2, a3)), _mm256_loadu_ps(lanes)));
}

}  // namespace detail

// z <- z + bias over a prefix of the row (the AVX2 family's: whole 32-float groups), its
// maximum folded into lanes[0..8). max_ps(x, m) is exactly x > m ? x : m, NaN included.
inline int64_t add_bias_max(float* z, const float* bias, int64_t V, float* lanes) {
    int64_t v = 0;
    __m512 p01 = _mm512_set1_ps(-INFINITY), p23 = _mm512_set1_ps(-INFINITY);
    const auto step = [&](int64_t at, __m512& peak) {
        const __m512 x = _mm512_add_ps(_mm512_loadu_ps(z + at), _mm512_loadu_ps(bias + at));
        _mm512_storeu_ps(z + at, x);
        peak = _mm512_max_ps(x, peak);
    };
    for (; v + 64 <= V; v += 64) {
        step(v, p01);
        step(v + 16, p23);
        step(v + 32, p01);
        step(v + 48, p23);
    }
    for (; v + 32 <= V; v += 32) {
        step(v, p01);
        step(v + 16, p23);
    }
    detail::fold_into_lanes(p01, p23, lanes, [](__m256 a, __m256 b) { return _mm256_max_ps(a, b); });
    return v;
}

// The maximum of a prefix of z (no bias, nothing stored), folded into lanes[0..8).
inline int64_t row_max(const float* z, int64_t V, float* lanes) {
    int64_t v = 0;
    __m512 p01 = _mm512_set1_ps(-INFINITY), p23 = _mm512_set1_ps(-INFINITY);
    for (; v + 64 <= V; v += 64) {
        p01 = _mm512_max_ps(_mm512_loadu_ps(z + v), p01);
        p23 = _mm512_max_ps(_mm512_loadu_ps(z + v + 16), p23);
        p01 = _mm512_max_ps(_mm512_loadu_ps(z + v + 32), p01);
        p23 = _mm512_max_ps(_mm512_loadu_ps(z + v + 48), p23);
    }
    for (; v + 32 <= V; v += 32) {
        p01 = _mm512_max_ps(_mm512_loadu_ps(z + v), p01);
        p23 = _mm512_max_ps(_mm512_loadu_ps(z + v + 16), p23);
    }
    detail::fold_into_lanes(p01, p23, lanes, [](__m256 a, __m256 b) { return _mm256_max_ps(a, b); });
    return v;
}

namespace detail {

// exp(z - shift) over K vectors from z (kStore: the exps replace them), added to s01 and
// s23 in turn: the elements' order into the AVX2 family's lanes (see above).
template <int K, bool kStore>
inline void exp_group(float* z, __m512 shift, __m512& s01, __m512& s23) {
    __m512 e[K];
    for (int k = 0; k < K; ++k) e[k] = _mm512_sub_ps(_mm512_loadu_ps(z + 16 * k), shift);
    lanes::exp_approx(e);
    if (kStore)
        for (int k = 0; k < K; ++k) _mm512_storeu_ps(z + 16 * k, e[k]);
    for (int k = 0; k < K; k += 2) {
        s01 = _mm512_add_ps(s01, e[k]);
        s23 = _mm512_add_ps(s23, e[k + 1]);
    }
}

}  // namespace detail

// exp(z - peak) over z[begin, end) from begin on (whole 32-float groups), summed into
// lanes[0..8) (kStore: the exps replace z), four vectors' exps interleaved.
template <bool kStore>
inline int64_t exp_sum(float* z, int64_t begin, int64_t end, float peak, float* lanes) {
    int64_t v = begin;
    __m512 s01 = _mm512_setzero_ps(), s23 = _mm512_setzero_ps();
    const __m512 shift = _mm512_set1_ps(peak);
    for (; v + 64 <= end; v += 64) detail::exp_group<4, kStore>(z + v, shift, s01, s23);
    for (; v + 32 <= end; v += 32) detail::exp_group<2, kStore>(z + v, shift, s01, s23);
    detail::fold_into_lanes(s01, s23, lanes, [](__m256 a, __m256 b) { return _mm256_add_ps(a, b); });
    return v;
}

}  // namespace row_spans
}  // namespace FASTLM_ISA
}  // namespace fastlm
