// Fixed-length training windows cut from one id sequence.
#pragma once

#include <cstdint>

namespace fastlm {

// Number of windows of seq_len inputs (plus one target) starting every stride tokens.
int64_t window_count(int64_t length, int64_t seq_len, int64_t stride);

// x[n] = ids[n*stride : n*stride+seq_len], y[n] = the same shifted by one; x, y (count, seq_len).
void make_windows(const int32_t* ids, int64_t seq_len, int64_t stride, int64_t count, int32_t* x, int32_t* y);

}  // namespace fastlm
