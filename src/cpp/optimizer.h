// Adam (as torch.optim.Adam computes it) and gradient clipping by global L2 norm.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace fastlm {

struct AdamConfig {
    double lr, beta1, beta2, eps, weight_decay;
};

// True when every value is finite.
bool all_finite(const float* x, int64_t n);

// One step in place; step counts from 1. weight_decay is an L2 term added to the gradient.
void adam_update(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
                 const AdamConfig& config);

// Global L2 norm of several arrays, accumulated in double.
double global_norm(const std::vector<std::pair<float*, int64_t>>& arrays);

// Scales every array by max_norm / (norm + 1e-6) when that is below 1, like
// torch.nn.utils.clip_grad_norm_; returns the norm before clipping.
double clip_grad_norm(const std::vector<std::pair<float*, int64_t>>& arrays, double max_norm);

}  // namespace fastlm
