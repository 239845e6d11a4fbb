#include "output_loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "activations.h"
#include "gemm.h"
#include "parallel.h"
#include "sampling.h"

namespace fastlm {
namespace {

int64_t chunk_rows(const OutputShape& s) {
    return std::max<int64_t>(1, std::min(s.rows, kLogitChunkElements / std::max<int64_t>(1, s.vocab)));
}

}  // namespace

double output_loss_forward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                           const int32_t* targets, float* lse, int32_t* predictions) {
    const int64_t H = s.hidden, V = s.vocab;
    const PackedB weight_t(weight, H, /*trans_b=*/true, H, V);
    const int64_t rows_per_chunk = chunk_rows(s);
    std::vector<float> logits(rows_per_chunk * V);
    std::vector<double> row_loss(rows_per_chunk);
    double total = 0.0;
    for (int64_t r0 = 0; r0 < s.rows; r0 += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, s.rows - r0);
        sgemm_packed(false, rows, h + r0 * H, H, weight_t, 0.0f, logits.data(), V);
#pragma omp parallel for if (rows * V >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float* z = logits.data() + r * V;
            for (int64_t v = 0; v < V; ++v) z[v] += bias[v];
            const int64_t best = argmax(z, V);
            const float peak = z[best];
            double sum = 0.0;
            for (int64_t v = 0; v < V; ++v) sum += exp_approx(z[v] - peak);
            const float row_lse = peak + static_cast<float>(std::log(sum));
            lse[r0 + r] = row_lse;
            predictions[r0 + r] = static_cast<int32_t>(best);
            row_loss[r] = static_cast<double>(row_lse) - static_cast<double>(z[targets[r0 + r]]);
        }
        for (int64_t r = 0; r < rows; ++r) total += row_loss[r];  // fixed order: thread-count independent
    }
    return total / static_cast<double>(s.rows);
}

void output_loss_backward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                          const int32_t* targets, const float* lse, float* dh, float* dweight, float* dbias) {
    const int64_t H = s.hidden, V = s.vocab;
    const PackedB weight_t(weight, H, /*trans_b=*/true, H, V);  // logits = h W^T
    const PackedB weight_n(weight, H, /*trans_b=*/false, V, H);  // dh = dlogits W
    const int64_t rows_per_chunk = chunk_rows(s);
    std::vector<float> dlogits(rows_per_chunk * V);
    const float inv_rows = 1.0f / static_cast<float>(s.rows);
    std::fill(dbias, dbias + V, 0.0f);
    for (int64_t r0 = 0; r0 < s.rows; r0 += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, s.rows - r0);
        sgemm_packed(false, rows, h + r0 * H, H, weight_t, 0.0f, dlogits.data(), V);
#pragma omp parallel for if (rows * V >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float* z = dlogits.data() + r * V;
            const float row_lse = lse[r0 + r];
            for (int64_t v = 0; v < V; ++v) z[v] = exp_approx(z[v] + bias[v] - row_lse) * inv_rows;
            z[targets[r0 + r]] -= inv_rows;
        }
        sgemm_packed(false, rows, dlogits.data(), V, weight_n, 0.0f, dh + r0 * H, H);
        sgemm(true, false, V, H, rows, dlogits.data(), V, h + r0 * H, H, r0 == 0 ? 0.0f : 1.0f, dweight, H);
        // Column sums, threads over disjoint column blocks: order fixed per element.
        const int64_t block = 256, blocks = (V + block - 1) / block;
#pragma omp parallel for if (rows * V >= kParallelMinWork && blocks > 1) schedule(static)
        for (int64_t cb = 0; cb < blocks; ++cb) {
            const int64_t v0 = cb * block, v1 = std::min(V, v0 + block);
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t v = v0; v < v1; ++v) dbias[v] += dlogits[r * V + v];
        }
    }
}

}  // namespace fastlm
