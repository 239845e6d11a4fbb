// The reference gemm microkernel: portable C++ on a 4 x 8 tile, accumulators in an
// array the compiler keeps in vector registers where the target has them (SSE2 on the
// x86-64 baseline). The blocking and packing around it are gemm.cpp's, as for the
// SIMD kernels.
// The interface of every gemm microkernel family (gemm.cpp's frame calls these):
//   MR x NR                the register tile;
//   micro_kernel<R>(kc, a, b, c, ldc, accumulate, l2_next, l2_lines)  c[R x NR] (row
//                          stride ldc) = a-panel (kc x MR, k-major) times b-panel (kc x NR)
//                          [+ c if accumulate], for R <= MR rows; and l2_lines cache lines
//                          from l2_next requested into L2 (the frame's prefetch of the next
//                          B panel), when and how the family finds cheapest;
//   kOneChainRows          the fewest rows R whose micro_kernel<R> computes each element
//                          as the full tile does (one chain of multiply-adds from zero in
//                          the order of k, then + c): the frame's row-invariant products;
//   micro_kernel_one_chain<R>(kc, a, b, panel_stride, c, ldc, accumulate)  for R <
//                          kOneChainRows: R rows of kOneChainPanels<R> full panels (panel q
//                          at b + q * panel_stride) with the full tile's arithmetic;
//   micro_kernel_edge<R>(nr, ...)  the same for the first nr < NR columns of the b-panel
//                          (an edge panel, zero-padded to NR), writing only those of c
//                          (here kernels/reference/gemm_edge.h's, through a buffer);
//   pack_a_rows(rows, kc, panel)  packs the first k steps of MR rows of op(A) into the
//                          panel (kc x MR) and returns how many it packed; the frame
//                          copies the rest element by element;
//   tile_element(kc, a, b) one element of a full tile from its row of A and column of
//                          B (kc floats each, contiguous), with the tile's arithmetic;
//   pack_b_columns(cols, k, panel)  the same for a full panel of a transposed B, from its
//                          NR column streams (0 where the family has no such pack).
#pragma once

#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

constexpr int64_t MR = 4, NR = 8;

// Rows from which a tile runs the full tile's single k-chain (see micro_kernel_one_chain).
constexpr int64_t kOneChainRows = 1;

template <int R>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* __restrict c, int64_t ldc, bool accumulate, const float* l2_next,
                         int64_t l2_lines) {
#if defined(__GNUC__)
    for (int64_t l = 0; l < l2_lines; ++l) __builtin_prefetch(l2_next + 16 * l, 0, 2);  // all before the tile
#else
    (void)l2_next, (void)l2_lines;
#endif
    float acc[R][NR] = {};
    for (int64_t p = 0; p < kc; ++p) {
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
        a += MR;
        b += NR;
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < NR; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
}

// Every tile runs one chain (kOneChainRows = 1): the frame never calls these.
template <int R>
constexpr int kOneChainPanels = 1;
template <int R>
void micro_kernel_one_chain(int64_t kc, const float* a, const float* b, int64_t panel_stride, float* c, int64_t ldc,
                            bool accumulate) = delete;

inline int64_t pack_a_rows(const float* const* /*rows*/, int64_t /*kc*/, float* /*panel*/) { return 0; }
inline int64_t pack_b_columns(const float* const* /*cols*/, int64_t /*k*/, float* /*panel*/) { return 0; }

// One element of a full tile as micro_kernel computes it: the same expression, in the
// order of k from zero (see the SIMD families).
inline float tile_element(int64_t kc, const float* a, const float* b) {
    float acc = 0.0f;
    for (int64_t p = 0; p < kc; ++p) acc += a[p] * b[p];
    return acc;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm

#include "kernels/reference/gemm_edge.h"
