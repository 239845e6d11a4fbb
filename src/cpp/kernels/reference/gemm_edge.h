// The edge panel's tile (nr < NR columns) for gemm microkernel families without masked
// stores: the full tile into a buffer (the b-panel is zero-padded to NR), then its first
// nr columns copied to C. Included by such a family's gemm_micro.h after its micro_kernel.
// Such families also pack every B: no tile reads B in place (kBInPlace).
#pragma once

#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

constexpr bool kBInPlace = false;
template <int R>
void micro_kernel_b_in_place(int64_t nr, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                             int64_t ldc, bool accumulate) = delete;  // never called: kBInPlace is false

// No tall tile (see the AVX-512 family): a row-invariant product's full tile and the edge
// rows after it run as two tiles.
constexpr bool kTallTile = false;
template <int E>
void micro_kernel_tall(int64_t nr, int64_t kc, const float* a, const float* a_edge, const float* b, float* c,
                       int64_t ldc, bool accumulate) = delete;  // never called: kTallTile is false

template <int R>
inline void micro_kernel_edge(int64_t nr, int64_t kc, const float* __restrict a, const float* __restrict b,
                              float* __restrict c, int64_t ldc, bool accumulate) {
    alignas(64) float edge[R * NR];
    micro_kernel<R>(kc, a, b, edge, NR, false, nullptr, 0);
    for (int r = 0; r < R; ++r)
        for (int64_t j = 0; j < nr; ++j)
            c[r * ldc + j] = accumulate ? c[r * ldc + j] + edge[r * NR + j] : edge[r * NR + j];
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
