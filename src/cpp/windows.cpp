#include "windows.h"

#include <cstring>
#include <vector>

#include "parallel.h"

namespace fastlm {

int64_t window_count(int64_t length, int64_t seq_len, int64_t stride) {
    return length <= seq_len ? 0 : (length - seq_len - 1) / stride + 1;  // seq_len + 1 may overflow
}

void gather_windows(const int32_t* ids, const int64_t* starts, int64_t count, int64_t seq_len, int32_t* x, int32_t* y) {
#pragma omp parallel for if (count * seq_len >= kParallelMinWork) schedule(static)
    for (int64_t n = 0; n < count; ++n) {
        std::memcpy(x + n * seq_len, ids + starts[n], sizeof(int32_t) * seq_len);
        std::memcpy(y + n * seq_len, ids + starts[n] + 1, sizeof(int32_t) * seq_len);
    }
}

void gather_windows(const uint16_t* ids, const int64_t* starts, int64_t count, int64_t seq_len, int32_t* x, int32_t* y) {
#pragma omp parallel for if (count * seq_len >= kParallelMinWork) schedule(static)
    for (int64_t n = 0; n < count; ++n) {
        const uint16_t* window = ids + starts[n];
        int32_t* xn = x + n * seq_len;
        int32_t* yn = y + n * seq_len;
        for (int64_t t = 0; t < seq_len; ++t) {
            xn[t] = window[t];
            yn[t] = window[t + 1];
        }
    }
}

void make_windows(const int32_t* ids, int64_t seq_len, int64_t stride, int64_t count, int32_t* x, int32_t* y) {
    std::vector<int64_t> starts(count);
    for (int64_t n = 0; n < count; ++n) starts[n] = n * stride;
    gather_windows(ids, starts.data(), count, seq_len, x, y);
}

}  // namespace fastlm
