// The AVX-512 logit-block family: a block of logits^T reduced to per-row statistics on
// sixteen float lanes, a row per lane (see kernels/reference/logit_block.h). The same
// arithmetic per row as the AVX2 family (a row's results do not depend on the width), with
// the comparisons in mask registers: a select is one instruction instead of the AVX2
// blend's several, and each instruction covers twice the rows.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "isa.h"
#include "kernels/avx512/vector_math.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace logit_block {

// Rows [r0, r0 + 16 N) of the block, N vectors of rows at a time: the maximum, its first
// index and (kRank) the count above the threshold down the block's m entries, in
// registers; then the exp sums over the same slice, still in L1. N exps interleave.
// kMasked: the last vector holds only the rows of mask last (the block's last rows),
// loaded and stored under it; its other lanes compute on zeros and are dropped.
template <int N, bool kRank, bool kMasked = false>
inline void slice(const float* z, int64_t ldz, int64_t m, int64_t r0, int64_t v0, const float* bias,
                  const float* threshold, float* max, float* sum, int32_t* arg, int32_t* above,
                  __mmask16 last = 0xFFFF) {
    const auto load = [last](int k, const float* p) __attribute__((always_inline)) {
        return kMasked && k == N - 1 ? _mm512_maskz_loadu_ps(last, p) : _mm512_loadu_ps(p);
    };
    __m512 peak[N], bar[N];
    __m512i index[N], count[N];
    const __m512i one = _mm512_set1_epi32(1);
    for (int k = 0; k < N; ++k) {
        peak[k] = _mm512_set1_ps(-INFINITY);
        index[k] = _mm512_set1_epi32(int32_t(v0));
        count[k] = _mm512_setzero_si512();
        bar[k] = kRank ? load(k, threshold + r0 + 16 * k) : _mm512_setzero_ps();
    }
    // Strictly greater: the first index of the maximum wins, as in NumPy's argmax (a NaN
    // is never greater; rows holding one are recomputed after the merge).
    for (int64_t v = 0; v < m; ++v) {
        const __m512 b = _mm512_set1_ps(bias[v0 + v]);
        const __m512i at = _mm512_set1_epi32(int32_t(v0 + v));
        const float* zv = z + v * ldz + r0;
#pragma GCC unroll 4
        for (int k = 0; k < N; ++k) {
            const __m512 x = _mm512_add_ps(load(k, zv + 16 * k), b);
            const __mmask16 greater = _mm512_cmp_ps_mask(x, peak[k], _CMP_GT_OQ);
            peak[k] = _mm512_mask_mov_ps(peak[k], greater, x);
            index[k] = _mm512_mask_mov_epi32(index[k], greater, at);
            if (kRank)
                count[k] = _mm512_mask_add_epi32(count[k], _mm512_cmp_ps_mask(x, bar[k], _CMP_GT_OQ), count[k], one);
        }
    }
    __m512 total[N];
    for (int k = 0; k < N; ++k) total[k] = _mm512_setzero_ps();
    for (int64_t v = 0; v < m; ++v) {
        const __m512 b = _mm512_set1_ps(bias[v0 + v]);
        const float* zv = z + v * ldz + r0;
        __m512 e[N];
#pragma GCC unroll 4
        for (int k = 0; k < N; ++k) e[k] = _mm512_sub_ps(_mm512_add_ps(load(k, zv + 16 * k), b), peak[k]);
        lanes::exp_approx(e);
#pragma GCC unroll 4
        for (int k = 0; k < N; ++k) total[k] = _mm512_add_ps(total[k], e[k]);
    }
    for (int k = 0; k < N; ++k) {
        if (kMasked && k == N - 1) {
            _mm512_mask_storeu_ps(max + r0 + 16 * k, last, peak[k]);
            _mm512_mask_storeu_ps(sum + r0 + 16 * k, last, total[k]);
            _mm512_mask_storeu_epi32(arg + r0 + 16 * k, last, index[k]);
            if (kRank) _mm512_mask_storeu_epi32(above + r0 + 16 * k, last, count[k]);
            continue;
        }
        _mm512_storeu_ps(max + r0 + 16 * k, peak[k]);
        _mm512_storeu_ps(sum + r0 + 16 * k, total[k]);
        _mm512_storeu_si512(arg + r0 + 16 * k, index[k]);
        if (kRank) _mm512_storeu_si512(above + r0 + 16 * k, count[k]);
    }
}

// Slices of 64 rows, then one of 32, then the last 1-31 rows in one or two vectors, the
// last under a mask: all n rows. The scalar loop of the other families would give the
// masked rows the same bits (the same operations, one row per lane), but took eight times
// as long per row: with N = 700 rows (ONNX config B) the 28 rows past the last multiple of
// 32 were a quarter of the block reduction's time.
template <bool kRank>
inline int64_t rows(const float* z, int64_t ldz, int64_t m, int64_t n, int64_t v0, const float* bias,
                    const float* threshold, float* max, float* sum, int32_t* arg, int32_t* above) {
    int64_t r0 = 0;
    for (; r0 + 64 <= n; r0 += 64) slice<4, kRank>(z, ldz, m, r0, v0, bias, threshold, max, sum, arg, above);
    if (r0 + 32 <= n) {
        slice<2, kRank>(z, ldz, m, r0, v0, bias, threshold, max, sum, arg, above);
        r0 += 32;
    }
    const int64_t left = n - r0;  // 0 to 31
    const __mmask16 last = __mmask16((1u << ((left - 1) % 16 + 1)) - 1);
    if (left > 16)
        slice<2, kRank, true>(z, ldz, m, r0, v0, bias, threshold, max, sum, arg, above, last);
    else if (left > 0)
        slice<1, kRank, true>(z, ldz, m, r0, v0, bias, threshold, max, sum, arg, above, last);
    return n;
}

}  // namespace logit_block
}  // namespace FASTLM_ISA
}  // namespace fastlm
