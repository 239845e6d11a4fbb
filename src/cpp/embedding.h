// Token embedding: a row lookup and its scatter-add gradient, side by side.
#pragma once

#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

// out (n, E) = weight[ids] with weight (V, E); ids already range-checked.
void embedding_forward(const float* weight, int64_t dim, const int32_t* ids, int64_t n, float* out);

// dweight (V, E) = sum over positions p with ids[p] = v of dout[p]. Deterministic: every
// row is summed in position order whatever the thread count.
void embedding_backward(const float* dout, int64_t dim, const int32_t* ids, int64_t n,
                        int64_t vocab_size, float* dweight);

}  // namespace FASTLM_ISA
}  // namespace fastlm
