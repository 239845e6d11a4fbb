#include "output_loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "activations.h"
#include "allocator.h"
#include "gemm.h"
#include "parallel.h"
#include "sampling.h"

namespace fastlm {
namespace {

int64_t chunk_rows(const OutputShape& s) {
    return std::max<int64_t>(1, std::min(s.rows, kLogitChunkElements / std::max<int64_t>(1, s.vocab)));
}

// The decoder weight packed both ways it is multiplied: logits = h W^T, dh = dlogits W.
struct PackedDecoder {
    PackedB weight_t, weight;
    PackedDecoder(const float* w, int64_t V, int64_t H, bool need_backward)
        : weight_t(w, H, /*trans_b=*/true, H, V),
          weight(need_backward ? PackedB(w, H, /*trans_b=*/false, V, H) : PackedB()) {}
};

// z (rows x V) <- h_chunk W^T; the bias is added by each row's first pass, which reads
// the row anyway (a separate pass over the chunk cost 10% of inference on B).
void chunk_logits(const OutputShape& s, const float* h_chunk, int64_t rows, const PackedB& weight_t, float* z) {
    sgemm_packed(false, rows, h_chunk, s.hidden, weight_t, 0.0f, z, s.vocab);
}

// Row reductions in sixteen independent lanes, so that the compiler vectorises them
// (a single running max or sum fixes the order and stays scalar without -ffast-math).
constexpr int64_t kLanes = 16;

// z <- z + bias, returning the row's maximum.
float add_bias_row_max(float* z, const float* bias, int64_t V) {
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, -INFINITY);
    int64_t v = 0;
    for (; v + kLanes <= V; v += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) {
            const float x = (z[v + l] += bias[v + l]);
            lanes[l] = x > lanes[l] ? x : lanes[l];
        }
    float peak = -INFINITY;
    for (; v < V; ++v) {
        const float x = (z[v] += bias[v]);
        peak = x > peak ? x : peak;
    }
    for (int64_t l = 0; l < kLanes; ++l) peak = lanes[l] > peak ? lanes[l] : peak;
    return peak;
}

// Sum of exp(z - peak) over a row (kStore: the exps replace z). Float lanes over blocks
// of 256, each block total added in double: ~1e-8 relative error at any V.
template <bool kStore>
double row_exp_sum(float* z, int64_t V, float peak) {
    constexpr int64_t kBlock = 256;
    double total = 0.0;
    for (int64_t b = 0; b < V; b += kBlock) {
        const int64_t end = std::min(V, b + kBlock);
        float lanes[kLanes] = {};
        int64_t v = b;
        for (; v + kLanes <= end; v += kLanes)
            for (int64_t l = 0; l < kLanes; ++l) {
                const float e = exp_approx(z[v + l] - peak);
                if (kStore) z[v + l] = e;
                lanes[l] += e;
            }
        for (; v < end; ++v) {
            const float e = exp_approx(z[v] - peak);
            if (kStore) z[v] = e;
            total += e;
        }
        float block = 0.0f;
        for (int64_t l = 0; l < kLanes; ++l) block += lanes[l];
        total += block;
    }
    return total;
}

// Training's row pass: z <- d loss / d logits = (softmax(z + bias) - onehot(target)) / N
// with a single exp per logit (kept, then scaled); returns the row's log-sum-exp.
float row_softmax_gradient_lse(float* z, const float* bias, int64_t V, int32_t target, float inv_rows) {
    const float peak = add_bias_row_max(z, bias, V);
    const double sum = row_exp_sum<true>(z, V, peak);
    const float scale = static_cast<float>(double(inv_rows) / sum);
    for (int64_t v = 0; v < V; ++v) z[v] *= scale;
    z[target] -= inv_rows;
    return peak + static_cast<float>(std::log(sum));
}

// z <- d loss / d logits = (softmax(z + bias) - onehot(target)) / N, in place.
void row_softmax_gradient(float* z, const float* bias, int64_t V, float lse, int32_t target, float inv_rows) {
    for (int64_t v = 0; v < V; ++v) z[v] = exp_approx(z[v] + bias[v] - lse) * inv_rows;
    z[target] -= inv_rows;
}

// From one chunk's dlogits: dh rows, and dW, db accumulated (overwritten on the first chunk).
void chunk_gradients(const OutputShape& s, const float* h_chunk, int64_t rows, bool first, const PackedB& weight,
                     const float* dlogits, float* dh_chunk, float* dweight, float* dbias) {
    const int64_t H = s.hidden, V = s.vocab;
    sgemm_packed(false, rows, dlogits, V, weight, 0.0f, dh_chunk, H);
    sgemm(true, false, V, H, rows, dlogits, V, h_chunk, H, first ? 0.0f : 1.0f, dweight, H);
    // Column sums, threads over disjoint column blocks: order fixed per element.
    const int64_t block = 256, blocks = (V + block - 1) / block;
#pragma omp parallel for if (rows * V >= kParallelMinWork && blocks > 1) schedule(static)
    for (int64_t cb = 0; cb < blocks; ++cb) {
        const int64_t v0 = cb * block, v1 = std::min(V, v0 + block);
        if (first) std::fill(dbias + v0, dbias + v1, 0.0f);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t v = v0; v < v1; ++v) dbias[v] += dlogits[r * V + v];
    }
}

}  // namespace

double output_loss_forward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                           const int32_t* targets, float* lse, int32_t* predictions) {
    const int64_t H = s.hidden, V = s.vocab;
    const PackedDecoder packed(weight, V, H, false);
    const int64_t rows_per_chunk = chunk_rows(s);
    const ScratchFloats logits = scratch_floats(rows_per_chunk * V);
    std::vector<double> row_loss(rows_per_chunk);
    double total = 0.0;
    for (int64_t r0 = 0; r0 < s.rows; r0 += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, s.rows - r0);
        chunk_logits(s, h + r0 * H, rows, packed.weight_t, logits.get());
#pragma omp parallel for if (rows * V >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float* z = logits.get() + r * V;
            const float peak = add_bias_row_max(z, bias, V);
            const double sum = row_exp_sum<false>(z, V, peak);
            // The first index of the maximum; a NaN anywhere makes the sum NaN, and then
            // NumPy's rule (the first NaN wins) needs the scalar scan.
            int64_t best = 0;
            if (std::isnan(sum)) {
                best = argmax(z, V);
            } else {
                while (z[best] != peak) ++best;
            }
            lse[r0 + r] = z[best] + static_cast<float>(std::log(sum));
            predictions[r0 + r] = static_cast<int32_t>(best);
            row_loss[r] = static_cast<double>(lse[r0 + r]) - static_cast<double>(z[targets[r0 + r]]);
        }
        for (int64_t r = 0; r < rows; ++r) total += row_loss[r];  // fixed order: thread-count independent
    }
    return total / static_cast<double>(s.rows);
}

void output_loss_backward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                          const int32_t* targets, const float* lse, float* dh, float* dweight, float* dbias) {
    const int64_t H = s.hidden, V = s.vocab;
    const PackedDecoder packed(weight, V, H, true);
    const int64_t rows_per_chunk = chunk_rows(s);
    const ScratchFloats dlogits = scratch_floats(rows_per_chunk * V);
    const float inv_rows = 1.0f / static_cast<float>(s.rows);
    for (int64_t r0 = 0; r0 < s.rows; r0 += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, s.rows - r0);
        chunk_logits(s, h + r0 * H, rows, packed.weight_t, dlogits.get());
#pragma omp parallel for if (rows * V >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < rows; ++r)
            row_softmax_gradient(dlogits.get() + r * V, bias, V, lse[r0 + r], targets[r0 + r], inv_rows);
        chunk_gradients(s, h + r0 * H, rows, r0 == 0, packed.weight, dlogits.get(), dh + r0 * H, dweight, dbias);
    }
}

double output_loss_forward_backward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                                    const int32_t* targets, float* dh, float* dweight, float* dbias) {
    const int64_t H = s.hidden, V = s.vocab;
    const PackedDecoder packed(weight, V, H, true);
    const int64_t rows_per_chunk = chunk_rows(s);
    const ScratchFloats dlogits = scratch_floats(rows_per_chunk * V);
    std::vector<double> row_loss(rows_per_chunk);
    const float inv_rows = 1.0f / static_cast<float>(s.rows);
    double total = 0.0;
    for (int64_t r0 = 0; r0 < s.rows; r0 += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, s.rows - r0);
        chunk_logits(s, h + r0 * H, rows, packed.weight_t, dlogits.get());
#pragma omp parallel for if (rows * V >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float* z = dlogits.get() + r * V;
            const int32_t target = targets[r0 + r];
            const float target_logit = z[target] + bias[target];
            const float lse = row_softmax_gradient_lse(z, bias, V, target, inv_rows);
            row_loss[r] = static_cast<double>(lse) - static_cast<double>(target_logit);
        }
        for (int64_t r = 0; r < rows; ++r) total += row_loss[r];
        chunk_gradients(s, h + r0 * H, rows, r0 == 0, packed.weight, dlogits.get(), dh + r0 * H, dweight, dbias);
    }
    return total / static_cast<double>(s.rows);
}

}  // namespace fastlm
