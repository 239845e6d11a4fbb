// The AVX-512 gemm microkernel: an 8 x 32 tile, two zmm accumulators per row.
// The interface of every gemm microkernel family (gemm.cpp's frame calls these):
//   MR x NR                the register tile;
//   micro_kernel<R>(...)   c[R x NR] (row stride ldc) = a-panel (kc x MR, k-major) times
//                          b-panel (kc x NR) [+ c if accumulate], for R <= MR rows;
//   pack_a_rows(rows, kc, panel)  packs the first k steps of MR rows of op(A) into the
//                          panel (kc x MR) and returns how many it packed; the frame
//                          copies the rest element by element.
#pragma once

#include <immintrin.h>

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

// No vector pack for eight rows: the frame's element copy serves.
inline int64_t pack_a_rows(const float* const* /*rows*/, int64_t /*kc*/, float* /*panel*/) { return 0; }

}  // namespace FASTLM_ISA
}  // namespace fastlm
