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

namespace {

// torch.optim.Adam's scalars for one step, rounded to float32 once, as NumPy rounds Python
// floats against float32 arrays.
struct AdamScalars {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, sqrt_bias_correction2, eps, weight_decay;
    bool decay;
};

AdamScalars adam_scalars(int64_t step, const AdamConfig& c) {
    return {float(c.beta1),
            float(c.beta2),
            float(1.0 - c.beta1),
            float(1.0 - c.beta2),
            float(c.lr / (1.0 - std::pow(c.beta1, double(step)))),
            float(std::sqrt(1.0 - std::pow(c.beta2, double(step)))),
            float(c.eps),
            float(c.weight_decay),
            c.weight_decay != 0.0};
}

// n elements of adam_update on the calling thread. adam_update and adam_update_rows both run
// every element through this one loop, so that a row with no gradient (grad pointing at
// zeros) goes through the same float operations as a dense gradient's zeros.
inline void adam_span(float* param, const float* grad, float* m, float* v, int64_t n, const AdamScalars& s) {
    for (int64_t i = 0; i < n; ++i) {
        const float g = s.decay ? grad[i] + s.weight_decay * param[i] : grad[i];
        m[i] = s.beta1 * m[i] + s.one_minus_beta1 * g;
        v[i] = s.beta2 * v[i] + s.one_minus_beta2 * g * g;
        const float denom = std::sqrt(v[i]) / s.sqrt_bias_correction2 + s.eps;
        param[i] -= s.step_size * m[i] / denom;
    }
}

}  // namespace

void adam_update(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
                 const AdamConfig& c) {
    const AdamScalars s = adam_scalars(step, c);
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic)
    for (int64_t i = 0; i < n; i += kStreamChunk)
        adam_span(param + i, grad + i, m + i, v + i, std::min(kStreamChunk, n - i), s);
}

namespace {

// The gradient of a run of rows outside a row-form gradient's rows, read piece by piece from
// one block of zeros that stays in cache.
constexpr int64_t kZeros = 4096;
alignas(64) const float kZeroBlock[kZeros] = {};

// Walks a (vocab, dim) parameter whose gradient is in row form (grad (count, dim) for rows,
// strictly increasing; 0 elsewhere), calling span(offset, g, n) on pieces of it: n floats
// from offset whose gradient is g, a row of grad or, for rows outside rows, kZeroBlock (at
// most kZeros floats at a time). Each float is in one piece; the pieces are shared among
// threads. Every row is walked, even where the update of a zero gradient looks like no
// change (plain SGD): a kernel runs with denormals-are-zero, so p - lr * 0 flushes a
// subnormal p to zero, and skipping the row would keep it. Unless skip_absent says the caller
// knows there is none (sgd_update_rows): then the rows outside rows are skipped.
template <typename Span>
void for_each_row_span(int64_t vocab, int64_t dim, const int32_t* rows, const float* grad, int64_t count,
                       const Span& span, bool skip_absent = false) {
    const int64_t block_rows = std::max<int64_t>(1, kStreamChunk / dim);
    const int64_t blocks = (vocab + block_rows - 1) / block_rows;
#pragma omp parallel for if (vocab * dim >= kParallelMinWork) schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t r0 = b * block_rows, r1 = std::min(vocab, r0 + block_rows);
        int64_t k = std::lower_bound(rows, rows + count, r0, [](int32_t row, int64_t r) { return row < r; }) - rows;
        for (int64_t r = r0; r < r1;) {
            const int64_t next = k < count ? std::min<int64_t>(rows[k], r1) : r1;  // the next row with a gradient
            for (int64_t i = r * dim, end = skip_absent ? i : next * dim; i < end; i += kZeros)
                span(i, kZeroBlock, std::min(kZeros, end - i));
            if (next == r1) break;
            span(next * dim, grad + k * dim, dim);
            r = next + 1;
            ++k;
        }
    }
}

}  // namespace

void adam_update_rows(float* param, int64_t dim, int64_t vocab, const int32_t* rows, const float* grad,
                      int64_t count, float* m, float* v, int64_t step, const AdamConfig& c) {
    const AdamScalars s = adam_scalars(step, c);
    for_each_row_span(vocab, dim, rows, grad, count, [&](int64_t i, const float* g, int64_t n) {
        adam_span(param + i, g, m + i, v + i, n, s);
    });
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

// Whether an SGD step may skip the rows a row-form gradient does not hold (sgd_update_rows).
bool skips_absent_rows(const SgdConfig& c, bool skip_absent_rows) {
    return skip_absent_rows && c.momentum == 0.0 && c.weight_decay == 0.0;
}

}  // namespace

void sgd_update(float* param, const float* grad, float* buf, int64_t n, int64_t step, const SgdConfig& c) {
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic)
    for (int64_t i = 0; i < n; i += kStreamChunk)
        sgd_span(param + i, grad + i, buf ? buf + i : nullptr, std::min(kStreamChunk, n - i), step, c);
}

void sgd_update_rows(float* param, int64_t dim, int64_t vocab, const int32_t* rows, const float* grad,
                     int64_t count, float* buf, int64_t step, const SgdConfig& c, bool skip_absent_rows) {
    for_each_row_span(
        vocab, dim, rows, grad, count,
        [&](int64_t i, const float* g, int64_t n) { sgd_span(param + i, g, buf ? buf + i : nullptr, n, step, c); },
        skips_absent_rows(c, skip_absent_rows));
}

namespace {

// Sum of x[i]^2 in double over one block, in kSquareLanes running sums (element i goes to
// lane i % kSquareLanes), then the lanes in a fixed order: the lanes are independent
// dependence chains, so the compiler vectorises them (one running sum is a chain of double
// additions, four cycles apart), and the result is the same for every thread count and
// instruction set, since it is written in the source, not chosen by the compiler.
constexpr int64_t kSquareLanes = 16;

// The lanes summed in a fixed order: halves, quarters, ... down to lanes[0].
double sum_lanes(double* lanes) {
    for (int64_t width = kSquareLanes / 2; width > 0; width /= 2)
        for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    return lanes[0];
}

double block_sum_of_squares(const float* x, int64_t n) {
    double lanes[kSquareLanes] = {};
    int64_t i = 0;
    for (; i + kSquareLanes <= n; i += kSquareLanes)
        for (int64_t l = 0; l < kSquareLanes; ++l) lanes[l] += double(x[i + l]) * double(x[i + l]);
    for (int64_t l = 0; i < n; ++i, ++l) lanes[l] += double(x[i]) * double(x[i]);
    return sum_lanes(lanes);
}

// gradient_norm's blocks of kNormBlock floats, summed in a fixed order: the norm does not
// depend on the thread count.
constexpr int64_t kNormBlock = 4096;

// block_sum_of_squares of dense elements [start, end) of a gradient in row form (GradientSpan):
// the elements inside its rows go to the same lanes in the same order, and the zeros between
// them, which would add +0.0 to a lane (a sum of squares, never -0.0), are skipped.
double row_block_sum_of_squares(const GradientSpan& g, int64_t start, int64_t end) {
    double lanes[kSquareLanes] = {};
    const int64_t first_row = start / g.dim;
    int64_t k = std::lower_bound(g.rows, g.rows + g.count, first_row, [](int32_t row, int64_t r) { return row < r; }) -
                g.rows;
    for (; k < g.count && int64_t(g.rows[k]) * g.dim < end; ++k) {
        const int64_t row_start = int64_t(g.rows[k]) * g.dim;
        const float* x = g.data + k * g.dim;  // x[j] is dense element row_start + j
        for (int64_t i = std::max(start, row_start), stop = std::min(end, row_start + g.dim); i < stop; ++i)
            lanes[(i - start) % kSquareLanes] += double(x[i - row_start]) * double(x[i - row_start]);
    }
    return sum_lanes(lanes);
}

// gradient_norm's sum of squares over a gradient in row form, added to total: the dense
// gradient's blocks that hold none of its rows sum to +0.0 and leave total as it is, so only
// the blocks its rows touch are summed, in increasing order.
double add_row_sum_of_squares(double total, const GradientSpan& g) {
    std::vector<int64_t> blocks;  // the blocks its rows touch, increasing
    for (int64_t k = 0; k < g.count; ++k) {
        const int64_t row_start = int64_t(g.rows[k]) * g.dim;
        for (int64_t b = row_start / kNormBlock; b <= (row_start + g.dim - 1) / kNormBlock; ++b)
            if (blocks.empty() || blocks.back() < b) blocks.push_back(b);
    }
    const int64_t count = int64_t(blocks.size());
    std::vector<double> partial(count);
#pragma omp parallel for if (g.count * g.dim >= kParallelMinWork) schedule(dynamic, 16)
    for (int64_t j = 0; j < count; ++j)
        partial[j] = row_block_sum_of_squares(g, blocks[j] * kNormBlock, std::min(g.n, (blocks[j] + 1) * kNormBlock));
    for (double sum : partial) total += sum;
    return total;
}

// gradient_norm's sum of squares over n floats, added to total.
double add_sum_of_squares(double total, const float* x, int64_t n) {
    const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
    std::vector<double> partial(blocks);
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic, kStreamChunk / kNormBlock)
    for (int64_t b = 0; b < blocks; ++b)
        partial[b] = block_sum_of_squares(x + b * kNormBlock, std::min(kNormBlock, n - b * kNormBlock));
    for (double sum : partial) total += sum;
    return total;
}

// The global norm of gradients of which some may be in row form.
double gradient_norm(const std::vector<GradientSpan>& grads) {
    double total = 0.0;
    for (const GradientSpan& g : grads)
        total = g.rows ? add_row_sum_of_squares(total, g) : add_sum_of_squares(total, g.data, g.n);
    return std::sqrt(total);
}

// torch's clip_grad_norm_: the global norm (refused when not finite) and the factor the
// gradients are scaled by when it is below 1.
struct Clip {
    double norm, scale;
};

Clip clip_of_norm(double norm, double max_norm) {
    if (!std::isfinite(norm))
        throw std::invalid_argument("gradient norm is " + std::to_string(norm) +
                                    ": the gradients hold NaN or infinity");
    return {norm, max_norm / (norm + 1e-6)};
}

void scale_in_place(float* x, int64_t n, float s) {
#pragma omp parallel for if (n >= kParallelMinWork) schedule(dynamic, kStreamChunk)
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace

double clip_grad_norm_rows(const std::vector<GradientSpan>& grads, double max_norm) {
    const auto [norm, scale] = clip_of_norm(gradient_norm(grads), max_norm);
    if (scale < 1.0)
        for (const GradientSpan& g : grads) scale_in_place(g.data, g.rows ? g.count * g.dim : g.n, float(scale));
    return norm;
}

double clip_grad_norm(const std::vector<std::pair<float*, int64_t>>& arrays, double max_norm) {
    std::vector<GradientSpan> dense;
    for (const auto& [x, n] : arrays) dense.push_back({x, n, nullptr, 0, 0});
    return clip_grad_norm_rows(dense, max_norm);
}

double clipped_sgd_update(const std::vector<SgdSpan>& spans, int64_t step, double max_norm, const SgdConfig& c) {
    std::vector<GradientSpan> grads;
    for (const SgdSpan& s : spans)
        grads.push_back({const_cast<float*>(s.grad), s.n, s.rows, s.count, s.dim});  // only read
    const auto [norm, scale] = clip_of_norm(gradient_norm(grads), max_norm);
    // The scaled gradient is rounded to float in a block buffer, as clip_grad_norm leaves it in
    // the gradient array: computed inside the update's expression, the compiler could fuse its
    // product into an FMA (buf * momentum + g) and round differently.
    constexpr int64_t kBlock = 1024;
    const float factor = float(scale);
    const auto scaled_span = [&](float* param, const float* grad, float* buf, int64_t n) {
        alignas(64) float g[kBlock];
        for (int64_t i = 0; i < n; i += kBlock) {
            const int64_t m = std::min(kBlock, n - i);
            for (int64_t j = 0; j < m; ++j) g[j] = grad[i + j] * factor;
            sgd_span(param + i, g, buf ? buf + i : nullptr, m, step, c);
        }
    };
    for (const SgdSpan& s : spans) {
        if (s.rows) {
            const int64_t vocab = s.n / s.dim;
            if (scale >= 1.0) {
                sgd_update_rows(s.param, s.dim, vocab, s.rows, s.grad, s.count, s.buf, step, c, s.skip_absent_rows);
                continue;
            }
            for_each_row_span(
                vocab, s.dim, s.rows, s.grad, s.count,
                [&](int64_t i, const float* g, int64_t n) {
                    if (g == kZeroBlock)  // 0 * factor is 0: the zeros are the scaled gradient
                        sgd_span(s.param + i, g, s.buf ? s.buf + i : nullptr, n, step, c);
                    else
                        scaled_span(s.param + i, g, s.buf ? s.buf + i : nullptr, n);
                },
                skips_absent_rows(c, s.skip_absent_rows));
            continue;
        }
        if (scale >= 1.0) {
            sgd_update(s.param, s.grad, s.buf, s.n, step, c);
            continue;
        }
#pragma omp parallel for if (s.n >= kParallelMinWork) schedule(dynamic, kStreamChunk / kBlock)
        for (int64_t i = 0; i < s.n; i += kBlock)
            scaled_span(s.param + i, s.grad + i, s.buf ? s.buf + i : nullptr, std::min(kBlock, s.n - i));
    }
    return norm;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
