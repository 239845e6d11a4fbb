#include "peak.h"

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/kernel_set.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace {

// Twelve accumulators: more than latency x units (4 x 2 on current x86 cores) so the
// FMA units, not the dependency chains, set the pace.
constexpr int kChains = 12;

// The widest multiply-add vector of the instruction set (kernels/<isa>/fma_vector.h).
using fma_vector::Vec, fma_vector::kWidth, fma_vector::splat, fma_vector::fma, fma_vector::first;

// `iterations` rounds of kChains FMAs; x <- x * 0.999 + 0.001 converges to 1 (no
// overflow, no denormals). Each call starts from the previous call's result and returns
// its own, so the compiler can neither drop the work nor reuse one call for the next.
float fma_chains(int64_t iterations, float start) {
    Vec acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = splat(start + 0.001f * float(c));
    const Vec scale = splat(0.999f), shift = splat(0.001f);
    for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
        for (int c = 0; c < kChains; ++c) acc[c] = fma(acc[c], scale, shift);
    }
    float sum = 0.0f;
    for (int c = 0; c < kChains; ++c) sum += first(acc[c]);
    return sum / float(kChains);
}

}  // namespace

double fma_peak_gflops(double seconds) {
    if (!(seconds > 0.0 && seconds <= 60.0))
        throw std::invalid_argument("seconds must be in (0, 60], got " + std::to_string(seconds));
    using Clock = std::chrono::steady_clock;
    constexpr int64_t kBatch = 1 << 20;  // a few milliseconds between clock reads
    int64_t total = 0;                   // iterations, all threads
    volatile float sink = 0.0f;
    const auto start = Clock::now();
#pragma omp parallel reduction(+ : total)
    {
        const auto deadline = start + std::chrono::duration<double>(seconds);
        float local = 0.0f;
        do {
            local = fma_chains(kBatch, local);
            total += kBatch;
        } while (Clock::now() < deadline);
#pragma omp critical
        sink = sink + local;
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    return double(total) * kChains * kWidth * 2.0 / elapsed / 1e9;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
