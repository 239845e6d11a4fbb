// The AVX-512 gemm microkernel: an 8 x 32 tile, two zmm accumulators per row.
// The interface of every gemm microkernel family (gemm.cpp's frame calls these):
//   MR x NR                the register tile;
//   micro_kernel<R>(...)   c[R x NR] (row stride ldc) = a-panel (kc x MR, k-major) times
//                          b-panel (kc x NR) [+ c if accumulate], for R <= MR rows;
//   pack_a_rows(rows, kc, panel)  packs the first k steps of MR rows of op(A) into the
//                          panel (kc x MR) and returns how many it packed; the frame
//                          copies the rest element by element;
//   tile_element(kc, a, b) one element of a full tile from its row of A and column of
//                          B (kc floats each, contiguous), with the tile's arithmetic.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

constexpr int64_t MR = 8, NR = 32;

// R <= MR rows of the tile; the a-panel keeps its MR stride. Few rows leave the FMA
// latency exposed, so R <= 2 (matrix-vector products in generation) runs two
// independent k-chains.
template <int R>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* __restrict c, int64_t ldc, bool accumulate) {
    constexpr int kChains = R <= 2 ? 2 : 1;
    __m512 acc[kChains][R][2];
    for (int h = 0; h < kChains; ++h)
        for (int r = 0; r < R; ++r) acc[h][r][0] = acc[h][r][1] = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + kChains <= kc; p += kChains) {
#pragma GCC unroll 2
        for (int h = 0; h < kChains; ++h) {
            const __m512 b0 = _mm512_loadu_ps(b + h * NR), b1 = _mm512_loadu_ps(b + h * NR + 16);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const __m512 ar = _mm512_set1_ps(a[h * MR + r]);
                acc[h][r][0] = _mm512_fmadd_ps(ar, b0, acc[h][r][0]);
                acc[h][r][1] = _mm512_fmadd_ps(ar, b1, acc[h][r][1]);
            }
        }
        a += kChains * MR;
        b += kChains * NR;
    }
    for (; p < kc; ++p) {  // odd kc with two chains
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        for (int r = 0; r < R; ++r) {
            const __m512 ar = _mm512_set1_ps(a[r]);
            acc[0][r][0] = _mm512_fmadd_ps(ar, b0, acc[0][r][0]);
            acc[0][r][1] = _mm512_fmadd_ps(ar, b1, acc[0][r][1]);
        }
        a += MR;
        b += NR;
    }
    for (int r = 0; r < R; ++r) {
        float* cr = c + r * ldc;
        __m512 c0 = acc[0][r][0], c1 = acc[0][r][1];
        if (kChains == 2) {
            c0 = _mm512_add_ps(c0, acc[kChains - 1][r][0]);
            c1 = _mm512_add_ps(c1, acc[kChains - 1][r][1]);
        }
        if (accumulate) {
            c0 = _mm512_add_ps(c0, _mm512_loadu_ps(cr));
            c1 = _mm512_add_ps(c1, _mm512_loadu_ps(cr + 16));
        }
        _mm512_storeu_ps(cr, c0);
        _mm512_storeu_ps(cr + 16, c1);
    }
}

// Eight k steps of the eight rows: the 8 x 8 block transposed in registers, so that each
// k step of the panel is one 8-float store (the element copy it replaces was most of the
// packing of the output layer's dh product, A = dlogits, K = V).
inline void pack_a_rows8_k8(const float* const rows[8], int64_t p, float* dst) {
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
    _mm256_storeu_ps(dst + 0 * MR, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + 1 * MR, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * MR, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * MR, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * MR, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * MR, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * MR, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * MR, _mm256_permute2f128_ps(s3, s7, 0x31));
}

inline int64_t pack_a_rows(const float* const* rows, int64_t kc, float* panel) {
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) pack_a_rows8_k8(rows, p, panel + p * MR);
    return p;
}

// One element of a full tile (R = MR) as micro_kernel computes it: a single chain of
// multiply-adds in the order of k, from zero. The frame computes a lone product element
// with it, bit-equal to the tile's (sgemm_packed_row_block_element).
inline float tile_element(int64_t kc, const float* a, const float* b) {
    float acc = 0.0f;
    for (int64_t p = 0; p < kc; ++p) acc = std::fma(a[p], b[p], acc);
    return acc;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
