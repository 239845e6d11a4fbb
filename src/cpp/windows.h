// Fixed-length training windows cut from one id sequence.
#pragma once

#include <cstdint>

namespace fastlm {

// Number of windows of seq_len inputs (plus one target) starting every stride tokens.
int64_t window_count(int64_t length, int64_t seq_len, int64_t stride);

// x[n] = ids[n*stride : n*stride+seq_len], y[n] = the same shifted by one; x, y (count, seq_len).
void make_windows(const int32_t* ids, int64_t seq_len, int64_t stride, int64_t count, int32_t* x, int32_t* y);

// Lazy batching: the windows starting at starts[0..count) gathered from the id array,
// so an epoch needs no copy of the corpus per window. Starts are range-checked by the caller.
// The uint16 overload reads a token file's narrow ids where they lie (e.g. a memory map),
// widening only the gathered windows.
void gather_windows(const int32_t* ids, const int64_t* starts, int64_t count, int64_t seq_len, int32_t* x, int32_t* y);
void gather_windows(const uint16_t* ids, const int64_t* starts, int64_t count, int64_t seq_len, int32_t* x, int32_t* y);

}  // namespace fastlm
