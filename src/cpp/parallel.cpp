#include "parallel.h"

#include <pthread.h>

#include <atomic>
#include <stdexcept>
#include <string>

namespace fastlm {
namespace {

// The count every kernel uses, from OMP_NUM_THREADS or the cores available at load.
std::atomic<int> process_threads{max_threads()};
// Set once a kernel may have started OpenMP's worker threads.
std::atomic<bool> workers_started{false};
// In a child forked after that, GNU OpenMP believes the parent's workers still exist and
// its first parallel region waits for them forever; a team of one never involves them.
std::atomic<bool> forked_after_workers{false};

void after_fork_in_child() {
    if (workers_started.load()) {
        forked_after_workers = true;
        process_threads = 1;
    }
}

[[maybe_unused]] const bool fork_handler_installed = pthread_atfork(nullptr, nullptr, after_fork_in_child) == 0;

}  // namespace

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("number of threads must be >= 1, got " + std::to_string(n));
    if (n > 1 && forked_after_workers.load())
        throw std::runtime_error(
            "this process was forked from one that had run fastlm's kernels on several threads, and "
            "OpenMP cannot start threads again after such a fork: kernels run on 1 thread here; for "
            "several, start the process with multiprocessing's 'spawn' or 'forkserver' method");
    process_threads = n;
}

int get_num_threads() { return process_threads.load(); }

void use_process_thread_count() {
    const int n = process_threads.load();
#ifdef _OPENMP
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
#endif
    if (n > 1 && !workers_started.load()) workers_started = true;
}

int parallel_team_size() {
    int size = 1;
#pragma omp parallel
    {
#pragma omp single
        size = num_threads_in_region();
    }
    return size;
}

bool has_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

}  // namespace fastlm
