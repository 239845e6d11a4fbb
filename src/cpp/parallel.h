// Thread control shared by all kernels: one place that knows whether OpenMP is there.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastlm {

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline int num_threads_in_region() {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

// The thread count is process-wide: OpenMP keeps it per thread (a new thread would start
// from the default again), so every kernel entry applies it to the calling thread.
void set_num_threads(int n);
int get_num_threads();
bool has_openmp();

// Called on entering a kernel, from any thread: its parallel regions use get_num_threads().
void use_process_thread_count();

// The number of threads a parallel region of the calling thread runs with (for tests).
int parallel_team_size();

// Blocks of b needed to cover a (a >= 0, b > 0): work split into items.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kParallelMinWork = 1 << 15;

// Below this many floats copied or added, a pass over rows runs on the calling thread.
// Such a pass is bound by memory and over in microseconds (zaremba-small's embedding
// lookup: 400 rows of 200 floats), where a parallel region's start costs waking the other
// threads, asleep again after the Python code between two ops (figures: 25d20e7's commit
// message).
constexpr int64_t kParallelMinCopy = 1 << 20;

// The optimizer's passes over every parameter (Adam, its finiteness check, the gradient
// norm and clipping) hand out chunks of this many elements to threads as they come
// (schedule(dynamic, kStreamChunk)) rather than a fixed half each: on a shared machine
// one core can run slower than the other for seconds (see GemmItems in gemm.cpp).
// 64 KB of floats per chunk keeps the hand-out cost negligible.
constexpr int64_t kStreamChunk = 1 << 14;

}  // namespace fastlm
