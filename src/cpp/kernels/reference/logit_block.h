// The logit-block family's interface, and its reference: the per-row statistics of one
// block of logits^T that the output layer's inference passes reduce while the block is in
// cache (output_loss.cpp). The reference handles no row; the caller's scalar loop, the
// same arithmetic, does them all.
//
//   rows<kRank>(z, ldz, m, n, v0, bias, threshold, max, sum, arg, above)
//       for the rows r of a prefix of [0, n) (a multiple of 32, or all n), of the block z[v * ldz + r]
//       (m vocabulary entries from v0): with x = z + bias[v0 + v], max[r] the largest x,
//       arg[r] its first index (v0 + v), sum[r] the sum of exp(x - max[r]) in the order of
//       v; with kRank, above[r] how many x exceed threshold[r] (the target's logit).
//       Returns the rows done.
// Each row's statistics are those of the scalar loop to the last bit: one row per lane,
// its values summed in the order of v, so the vector width changes no result.
#pragma once

#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace logit_block {

template <bool kRank>
inline int64_t rows(const float*, int64_t, int64_t, int64_t, int64_t, const float*, const float*, float*, float*,
                    int32_t*, int32_t*) {
    return 0;
}

}  // namespace logit_block
}  // namespace FASTLM_ISA
}  // namespace fastlm
