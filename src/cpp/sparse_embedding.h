// Sparse embedding updates: the gradient of the rows a batch uses, and torch.optim.SparseAdam's
// step on those rows alone, so that training never forms or walks the dense V x E gradient.
#pragma once

#include <cstdint>

#include "isa.h"
#include "kernels.h"

namespace fastlm {
namespace FASTLM_ISA {

// The distinct ids of ids (n) in increasing order into rows, and each one's summed gradient
// (the dout rows of its positions, in position order) into grad (E per row); returns how
// many rows (at most n). Deterministic for any thread count.
int64_t embedding_backward_sparse(const float* dout, int64_t dim, const int32_t* ids, int64_t n, int32_t* rows,
                                  float* grad);

// torch.optim.SparseAdam on rows[k] of param (E wide), k < count: its moments are rows
// slots[k] of m and v (kept only for rows seen), step counts from 1, no weight decay:
//   m += (1 - beta1)(g - m);  v += (1 - beta2)(g^2 - v);
//   param -= lr sqrt(1 - beta2^step) / (1 - beta1^step) * m / (sqrt(v) + eps).
void sparse_adam_update(float* param, int64_t dim, const int32_t* rows, const float* grad, int64_t count, float* m,
                        float* v, const int32_t* slots, int64_t step, const AdamConfig& config);

// torch.optim.SGD's plain step (no momentum, no weight decay) on a sparse gradient: rows[k]
// of param (E wide), k < count: param[rows[k]] -= lr * grad[k].
void sparse_sgd_update(float* param, int64_t dim, const int32_t* rows, const float* grad, int64_t count, double lr);

}  // namespace FASTLM_ISA
}  // namespace fastlm
