#include "sparse_embedding.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "parallel.h"

namespace fastlm {
namespace FASTLM_ISA {

int64_t embedding_backward_sparse(const float* dout, int64_t dim, const int32_t* ids, int64_t n, int32_t* rows,
                                  float* grad) {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    std::vector<int64_t> first;  // where each distinct id's positions start in order
    for (int64_t k = 0; k < n; ++k)
        if (k == 0 || ids[order[k]] != ids[order[k - 1]]) first.push_back(k);
    const int64_t count = int64_t(first.size());
    first.push_back(n);
#pragma omp parallel for if (n * dim >= kParallelMinCopy) schedule(static)
    for (int64_t r = 0; r < count; ++r) {
        rows[r] = ids[order[first[r]]];
        float* dst = grad + r * dim;
        std::fill(dst, dst + dim, 0.0f);
        for (int64_t k = first[r]; k < first[r + 1]; ++k) {
            const float* src = dout + order[k] * dim;
            for (int64_t j = 0; j < dim; ++j) dst[j] += src[j];
        }
    }
    return count;
}

void sparse_adam_update(float* param, int64_t dim, const int32_t* rows, const float* grad, int64_t count, float* m,
                        float* v, const int32_t* slots, int64_t step, const AdamConfig& c) {
    // Scalars rounded to float32 once, as NumPy rounds Python floats against float32 arrays.
    const float one_minus_beta1 = float(1.0 - c.beta1), one_minus_beta2 = float(1.0 - c.beta2);
    const float step_size =
        float(c.lr * std::sqrt(1.0 - std::pow(c.beta2, double(step))) / (1.0 - std::pow(c.beta1, double(step))));
    const float eps = float(c.eps);
#pragma omp parallel for if (count * dim >= kParallelMinWork) schedule(static)
    for (int64_t k = 0; k < count; ++k) {
        float* p = param + int64_t(rows[k]) * dim;
        float* mk = m + int64_t(slots[k]) * dim;
        float* vk = v + int64_t(slots[k]) * dim;
        const float* g = grad + k * dim;
        for (int64_t j = 0; j < dim; ++j) {
            mk[j] += (g[j] - mk[j]) * one_minus_beta1;
            vk[j] += (g[j] * g[j] - vk[j]) * one_minus_beta2;
            p[j] -= step_size * (mk[j] / (std::sqrt(vk[j]) + eps));
        }
    }
}

void sparse_sgd_update(float* param, int64_t dim, const int32_t* rows, const float* grad, int64_t count,
                       double lr) {
    const float rate = float(lr);  // rounded once, as sgd_update (and NumPy) round it
#pragma omp parallel for if (count * dim >= kParallelMinWork) schedule(static)
    for (int64_t k = 0; k < count; ++k) {  // distinct rows: one writer each
        float* p = param + int64_t(rows[k]) * dim;
        const float* g = grad + k * dim;
        for (int64_t j = 0; j < dim; ++j) p[j] -= rate * g[j];
    }
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
