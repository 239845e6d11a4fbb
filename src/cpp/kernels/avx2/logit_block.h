// The AVX2 + FMA logit-block family: a block of logits^T reduced to per-row statistics
// on eight float lanes, a row per lane (see kernels/reference/logit_block.h).
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "isa.h"
#include "kernels/avx2/vector_math.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace logit_block {

// Rows [r0, r0 + 32) of a block of logits^T (z[v * ldz + r], m entries from v0): the
// maximum and its first index (and with kRank the count above each row's threshold), then
// the exp sum, for four vectors of rows at a time. The statistics stay in registers down
// the block's m entries, and the second pass finds this row slice still in L1 (two sweeps
// of the whole block would reach L2 and keep the running values in memory). The four
// exps' dependence chains interleave (lanes::).
template <bool kRank>
inline void rows32(const float* z, int64_t ldz, int64_t m, int64_t r0, int64_t v0, const float* bias,
                   const float* threshold, float* max, float* sum, int32_t* arg, int32_t* above) {
    __m256 peak[4], bar[4];
    __m256i index[4], count[4];
    for (int k = 0; k < 4; ++k) {
        peak[k] = _mm256_set1_ps(-INFINITY);
        index[k] = _mm256_set1_epi32(int32_t(v0));
        count[k] = _mm256_setzero_si256();
        bar[k] = kRank ? _mm256_loadu_ps(threshold + r0 + 8 * k) : _mm256_setzero_ps();
    }
    // Strictly greater: the first index of the maximum wins, as in NumPy's argmax (a NaN
    // is never greater; rows holding one are recomputed after the merge).
    for (int64_t v = 0; v < m; ++v) {
        const __m256 b = _mm256_set1_ps(bias[v0 + v]);
        const __m256i at = _mm256_set1_epi32(int32_t(v0 + v));
        const float* zv = z + v * ldz + r0;
        for (int k = 0; k < 4; ++k) {
            const __m256 x = _mm256_add_ps(_mm256_loadu_ps(zv + 8 * k), b);
            const __m256 greater = _mm256_cmp_ps(x, peak[k], _CMP_GT_OQ);
            peak[k] = _mm256_blendv_ps(peak[k], x, greater);
            index[k] = _mm256_castps_si256(
                _mm256_blendv_ps(_mm256_castsi256_ps(index[k]), _mm256_castsi256_ps(at), greater));
            if (kRank)  // all ones (-1) where x exceeds the threshold
                count[k] = _mm256_sub_epi32(count[k], _mm256_castps_si256(_mm256_cmp_ps(x, bar[k], _CMP_GT_OQ)));
        }
    }
    __m256 total[4];
    for (int k = 0; k < 4; ++k) total[k] = _mm256_setzero_ps();
    for (int64_t v = 0; v < m; ++v) {
        const __m256 b = _mm256_set1_ps(bias[v0 + v]);
        const float* zv = z + v * ldz + r0;
        __m256 e[4];
        for (int k = 0; k < 4; ++k) e[k] = _mm256_sub_ps(_mm256_add_ps(_mm256_loadu_ps(zv + 8 * k), b), peak[k]);
        lanes::exp_approx(e);
        for (int k = 0; k < 4; ++k) total[k] = _mm256_add_ps(total[k], e[k]);
    }
    for (int k = 0; k < 4; ++k) {
        _mm256_storeu_ps(max + r0 + 8 * k, peak[k]);
        _mm256_storeu_ps(sum + r0 + 8 * k, total[k]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg + r0 + 8 * k), index[k]);
        if (kRank) _mm256_storeu_si256(reinterpret_cast<__m256i*>(above + r0 + 8 * k), count[k]);
    }
}

template <bool kRank>
inline int64_t rows(const float* z, int64_t ldz, int64_t m, int64_t n, int64_t v0, const float* bias,
                    const float* threshold, float* max, float* sum, int32_t* arg, int32_t* above) {
    int64_t r0 = 0;
    for (; r0 + 32 <= n; r0 += 32) rows32<kRank>(z, ldz, m, r0, v0, bias, threshold, max, sum, arg, above);
    return r0;
}

}  // namespace logit_block
}  // namespace FASTLM_ISA
}  // namespace fastlm
