// Memory for the kernels: scratch buffers that are not zeroed, and process-wide allocator
// tuning for batch-after-batch workloads.
#pragma once

#include <cstdint>
#include <memory>

namespace fastlm {

// Scratch floats that a kernel writes before it reads them. std::vector<float>(n) would
// zero them first: a memset of every logits chunk and packed weight, every batch.
using ScratchFloats = std::unique_ptr<float[]>;
inline ScratchFloats scratch_floats(int64_t n) { return ScratchFloats(new float[n]); }

// glibc hands blocks above a (dynamic) threshold back to the OS when they are freed and
// trims the heap top beyond 128 KiB, so every batch's activations and gradients -- tens
// of MB -- are page-faulted and zeroed afresh: 15% of a training step was spent in the
// kernel, and configs B/D trained 25-50% slower. This keeps such blocks in the heap for
// reuse. Process wide (it also serves NumPy's allocations), so FASTLM_MALLOC_TUNING=0
// turns it off, and a user's own GLIBC_TUNABLES for malloc take precedence. Returns
// whether the tuning was applied (never on non-glibc systems).
bool tune_malloc();

}  // namespace fastlm
