// Adam and SGD (as torch.optim.Adam and torch.optim.SGD compute them) and gradient clipping
// by global L2 norm.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "isa.h"
#include "kernels.h"

namespace fastlm {
namespace FASTLM_ISA {

// True when every value is finite.
bool all_finite(const float* x, int64_t n);

// One step in place; step counts from 1. weight_decay is an L2 term added to the gradient.
void adam_update(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
                 const AdamConfig& config);

// adam_update on param (vocab, dim) with the gradient in row form: grad (count, dim) holds
// the gradients of rows (strictly increasing), every other row's gradient is 0. The same
// parameters and moments to the bit as adam_update on the dense gradient (the same float
// operations on every element, a zero gradient included), without reading one.
void adam_update_rows(float* param, int64_t dim, int64_t vocab, const int32_t* rows, const float* grad,
                      int64_t count, float* m, float* v, int64_t step, const AdamConfig& config);

// One step in place; step counts from 1. With momentum > 0, buf is the momentum buffer: the
// first step sets it to the gradient (torch starts it there, not at zero), later steps decay
// it by momentum and add the gradient. weight_decay is an L2 term added to the gradient;
// Nesterov steps along gradient + momentum * buf instead of buf. buf is unused (may be null)
// when momentum is 0.
void sgd_update(float* param, const float* grad, float* buf, int64_t n, int64_t step, const SgdConfig& config);

// sgd_update on param (vocab, dim) with the gradient in row form (as adam_update_rows): the
// same parameters and buffer to the bit as on the dense gradient.
// skip_absent_rows: the caller knows that the rows outside rows hold no subnormal floats
// (every value there was last written by a kernel, which flushes them). Plain SGD (no
// momentum, no weight decay) then leaves those rows unread: their update p - lr * 0 is p
// itself, and only a subnormal p, read as zero under denormals-are-zero, would change.
// With momentum or weight decay every row is walked as without it.
void sgd_update_rows(float* param, int64_t dim, int64_t vocab, const int32_t* rows, const float* grad,
                     int64_t count, float* buf, int64_t step, const SgdConfig& config,
                     bool skip_absent_rows = false);

// Scales every array by max_norm / (norm + 1e-6) when that is below 1, like
// torch.nn.utils.clip_grad_norm_; returns the norm before clipping.
double clip_grad_norm(const std::vector<std::pair<float*, int64_t>>& arrays, double max_norm);

// clip_grad_norm where a gradient may be in row form (GradientSpan): the norm and the scaled
// values are those of clip_grad_norm on the dense gradients, to the bit (the zeros a dense
// gradient holds outside its rows add nothing to a sum of squares and stay zero when scaled).
double clip_grad_norm_rows(const std::vector<GradientSpan>& grads, double max_norm);

// clip_grad_norm on the gradients, then sgd_update on every parameter, in two passes over
// the gradients instead of four (the norm, the scaling, sgd_update's finiteness check, the
// update): the same parameters and buffers to the bit, but the gradients are left as they
// were, not scaled. A non-finite norm throws before anything is written. Returns the norm. A
// span's gradient may be in row form (SgdSpan.rows): then as sgd_update_rows (with the span's
// skip_absent_rows), and its norm as clip_grad_norm_rows takes it.
double clipped_sgd_update(const std::vector<SgdSpan>& spans, int64_t step, double max_norm, const SgdConfig& config);

}  // namespace FASTLM_ISA
}  // namespace fastlm
