#include "embedding.h"

#include <algorithm>
#include <cstring>

#include "parallel.h"

namespace fastlm {
namespace FASTLM_ISA {

void embedding_forward(const float* weight, int64_t dim, const int32_t* ids, int64_t n, float* out) {
#pragma omp parallel for if (n * dim >= kParallelMinCopy) schedule(static)
    for (int64_t p = 0; p < n; ++p) std::memcpy(out + p * dim, weight + int64_t(ids[p]) * dim, sizeof(float) * dim);
}

void embedding_backward(const float* dout, int64_t dim, const int32_t* ids, int64_t n,
                        int64_t vocab_size, float* dweight) {
    std::fill(dweight, dweight + vocab_size * dim, 0.0f);
    // Threads own disjoint column slices, so no two write the same float and the
    // summation order per element is the position order.
    const int64_t slice = 16;
    const int64_t slices = (dim + slice - 1) / slice;
#pragma omp parallel for if (n * dim >= kParallelMinWork && slices > 1) schedule(static)
    for (int64_t s = 0; s < slices; ++s) {
        const int64_t j0 = s * slice, j1 = std::min(dim, j0 + slice);
        for (int64_t p = 0; p < n; ++p) {
            float* row = dweight + int64_t(ids[p]) * dim;
            const float* src = dout + p * dim;
            for (int64_t j = j0; j < j1; ++j) row[j] += src[j];
        }
    }
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
