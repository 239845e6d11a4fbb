// Memory for the kernels: scratch buffers that are not zeroed, and process-wide allocator
// tuning for batch-after-batch workloads.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace fastlm {

// Scratch floats that a kernel writes before it reads them. std::vector<float>(n) would
// zero them first: a memset of every logits chunk and packed weight, every batch.
using ScratchFloats = std::unique_ptr<float[]>;
inline ScratchFloats scratch_floats(int64_t n) { return ScratchFloats(new float[n]); }

// A thread's buffer (a thread_local vector) of at least n floats, grown to the largest
// request and kept: per-thread packing, result and softmax blocks, allocated once.
inline float* thread_buffer(std::vector<float>& buffer, int64_t n) {
    if (int64_t(buffer.size()) < n) buffer.resize(n);
    return buffer.data();
}

// glibc hands blocks above a (dynamic) threshold back to the OS when they are freed and
// trims the heap top beyond 128 KiB, so every batch's activations and gradients -- tens
// of MB -- would be page-faulted and zeroed afresh. tune_malloc keeps such blocks in the
// heap for reuse. Process wide (it also serves NumPy's allocations), so the Python package
// calls it once on import, unless the user opted out (fastlm/_environment.py decides).
// Returns whether the tuning is in force (never on non-glibc systems), as malloc_tuned().
bool tune_malloc();
bool malloc_tuned();

}  // namespace fastlm
