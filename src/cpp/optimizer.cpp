#include "optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "parallel.h"

namespace fastlm {
namespace FASTLM_ISA {

bool all_finite(const float* x, int64_t n) {
    int bad = 0;
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic, kStreamChunk) reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) bad |= !std::isfinite(x[i]);
    return !bad;
}

void adam_update(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
                 const AdamConfig& c) {
    // Scalars rounded to float32 once, as NumPy rounds Python floats against float32 arrays.
    const float beta1 = float(c.beta1), beta2 = float(c.beta2);
    const float one_minus_beta1 = float(1.0 - c.beta1), one_minus_beta2 = float(1.0 - c.beta2);
    const float step_size = float(c.lr / (1.0 - std::pow(c.beta1, double(step))));
    const float sqrt_bias_correction2 = float(std::sqrt(1.0 - std::pow(c.beta2, double(step))));
    const float eps = float(c.eps), weight_decay = float(c.weight_decay);
    const bool decay = c.weight_decay != 0.0;
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic, kStreamChunk)
    for (int64_t i = 0; i < n; ++i) {
        const float g = decay ? grad[i] + weight_decay * param[i] : grad[i];
        m[i] = beta1 * m[i] + one_minus_beta1 * g;
        v[i] = beta2 * v[i] + one_minus_beta2 * g * g;
        const float denom = std::sqrt(v[i]) / sqrt_bias_correction2 + eps;
        param[i] -= step_size * m[i] / denom;
    }
}

namespace {

// n elements of sgd_update on the calling thread.
inline void sgd_span(float* param, const float* grad, float* buf, int64_t n, int64_t step, const SgdConfig& c) {
    // torch's order of float32 operations: g + wd * p; buf * momentum + g; g + momentum * buf.
    const float lr = float(c.lr), momentum = float(c.momentum), weight_decay = float(c.weight_decay);
    const bool decay = c.weight_decay != 0.0, use_momentum = c.momentum != 0.0, first = step == 1;
    const bool nesterov = c.nesterov;
    for (int64_t i = 0; i < n; ++i) {
        float g = decay ? grad[i] + weight_decay * param[i] : grad[i];
        if (use_momentum) {
            buf[i] = first ? g : buf[i] * momentum + g;
            g = nesterov ? g + momentum * buf[i] : buf[i];
        }
        param[i] -= lr * g;
    }
}

}  // namespace

void sgd_update(float* param, const float* grad, float* buf, int64_t n, int64_t step, const SgdConfig& c) {
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic)
    for (int64_t i = 0; i < n; i += kStreamChunk)
        sgd_span(param + i, grad + i, buf ? buf + i : nullptr, std::min(kStreamChunk, n - i), step, c);
}

namespace {

// Sum of x[i]^2 in double over one block, in kSquareLanes running sums (element i goes to
// lane i % kSquareLanes), then the lanes in a fixed order: the lanes are independent
// dependence chains, so the compiler vectorises them (one running sum is a chain of double
// additions, four cycles apart), and the result is the same for every thread count and
// instruction set, since it is written in the source, not chosen by the compiler.
constexpr int64_t kSquareLanes = 16;

double block_sum_of_squares(const float* x, int64_t n) {
    double lanes[kSquareLanes] = {};
    int64_t i = 0;
    for (; i + kSquareLanes <= n; i += kSquareLanes)
        for (int64_t l = 0; l < kSquareLanes; ++l) lanes[l] += double(x[i + l]) * double(x[i + l]);
    for (int64_t l = 0; i < n; ++i, ++l) lanes[l] += double(x[i]) * double(x[i]);
    for (int64_t width = kSquareLanes / 2; width > 0; width /= 2)
        for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    return lanes[0];
}

}  // namespace

double global_norm(const std::vector<std::pair<float*, int64_t>>& arrays) {
    // Fixed blocks summed in a fixed order: the norm does not depend on the thread count.
    constexpr int64_t kBlock = 4096;
    double total = 0.0;
    std::vector<double> partial;
    for (const auto& [x, n] : arrays) {
        const int64_t blocks = (n + kBlock - 1) / kBlock;
        partial.assign(blocks, 0.0);
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic, kStreamChunk / kBlock)
        for (int64_t b = 0; b < blocks; ++b) partial[b] = block_sum_of_squares(x + b * kBlock, std::min(kBlock, n - b * kBlock));
        for (double sum : partial) total += sum;
    }
    return std::sqrt(total);
}

namespace {

// torch's clip_grad_norm_: the global norm (refused when not finite) and the factor the
// gradients are scaled by when it is below 1.
struct Clip {
    double norm, scale;
};

Clip clip_of(const std::vector<std::pair<float*, int64_t>>& arrays, double max_norm) {
    const double norm = global_norm(arrays);
    if (!std::isfinite(norm))
        throw std::invalid_argument("gradient norm is " + std::to_string(norm) +
                                    ": the gradients hold NaN or infinity");
    return {norm, max_norm / (norm + 1e-6)};
}

}  // namespace

double clip_grad_norm(const std::vector<std::pair<float*, int64_t>>& arrays, double max_norm) {
    const auto [norm, scale] = clip_of(arrays, max_norm);
    if (scale < 1.0) {
        const float s = float(scale);
        for (const auto& [x, n] : arrays) {
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic, kStreamChunk)
            for (int64_t i = 0; i < n; ++i) x[i] *= s;
        }
    }
    return norm;
}

double clipped_sgd_update(const std::vector<SgdSpan>& spans, int64_t step, double max_norm, const SgdConfig& c) {
    std::vector<std::pair<float*, int64_t>> grads;
    for (const SgdSpan& s : spans) grads.emplace_back(const_cast<float*>(s.grad), s.n);  // only read
    const auto [norm, scale] = clip_of(grads, max_norm);
    for (const SgdSpan& s : spans) {
        if (scale >= 1.0) {
            sgd_update(s.param, s.grad, s.buf, s.n, step, c);
            continue;
        }
        const float factor = float(scale);
        // The scaled gradient is rounded to float in a block buffer, as clip_grad_norm leaves
        // it in the gradient array: computed inside the update's expression, the compiler
        // could fuse its product into an FMA (buf * momentum + g) and round differently.
        constexpr int64_t kBlock = 1024;
#pragma omp parallel for if (s.n >= kParallelMinWork) schedule(dynamic, kStreamChunk / kBlock)
        for (int64_t i = 0; i < s.n; i += kBlock) {
            const int64_t n = std::min(kBlock, s.n - i);
            alignas(64) float g[kBlock];
            for (int64_t j = 0; j < n; ++j) g[j] = s.grad[i + j] * factor;
            sgd_span(s.param + i, g, s.buf ? s.buf + i : nullptr, n, step, c);
        }
    }
    return norm;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
