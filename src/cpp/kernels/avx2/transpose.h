// An 8 x 8 block of floats transposed in registers (AVX): the packs of the gemm
// microkernels' panels from row streams, shared by the AVX2 and AVX-512 families.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

// Eight k steps of eight rows: the 8 x 8 block transposed in registers, so that each k
// step is one 8-float store, kStride floats apart (the element copy it replaces was most
// of the packing of the output layer's dh product, A = dlogits, K = V).
template <int64_t kStride>
inline void transpose_rows8_k8(const float* const rows[8], int64_t p, float* dst) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows[i] + p);
    // Pairs of rows interleaved: t0 = (r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5]).
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // Rows 0-3 (s0..s3) and 4-7 (s4..s7) of one k per 128-bit half: k0 | k4, k1 | k5, ...
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst + 0 * kStride, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + 1 * kStride, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * kStride, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * kStride, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * kStride, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * kStride, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * kStride, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * kStride, _mm256_permute2f128_ps(s3, s7, 0x31));
}

// The first k steps of a panel kWidth floats wide (a multiple of 8) from its kWidth
// column streams (cols[j][p] = element (p, j)) into panel (k x kWidth, k-major); returns
// how many it packed, a multiple of 8. kWidth / 8 transposes per eight k steps instead of
// a load and a store per float.
template <int64_t kWidth>
inline int64_t transpose_columns_k8(const float* const cols[kWidth], int64_t k, float* panel) {
    static_assert(kWidth % 8 == 0);
    int64_t p = 0;
    for (; p + 8 <= k; p += 8)
        for (int64_t g = 0; g < kWidth / 8; ++g) transpose_rows8_k8<kWidth>(cols + 8 * g, p, panel + p * kWidth + 8 * g);
    return p;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
