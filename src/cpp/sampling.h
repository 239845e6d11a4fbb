// Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus),
// with a small counter-based generator so that the NumPy twin can draw the same numbers.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "isa.h"
#include "kernels.h"

namespace fastlm {
namespace FASTLM_ISA {

// Index of the largest value, the first one on ties; the first NaN if there is one
// (NumPy's argmax, so the twins agree even on broken input).
inline int64_t argmax(const float* x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (x[i] != x[i]) return i;
        if (x[i] > x[best]) best = i;
    }
    return best;
}

// splitmix64: tiny, fast, and the same stream on every platform.
class SplitMix64 {
public:
    explicit SplitMix64(uint64_t seed) : state_(seed) {}
    uint64_t next() {
        uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1), 53 random bits

private:
    uint64_t state_;
};

// The first of n candidates whose cumulative weight exceeds u * (total weight), u ~ U[0, 1).
template <typename WeightAt>
int64_t draw(int64_t n, const WeightAt& weight_at, SplitMix64& rng) {
    double total = 0.0;
    for (int64_t r = 0; r < n; ++r) total += weight_at(r);
    const double target = rng.uniform() * total;
    double cumulative = 0.0;
    for (int64_t r = 0; r < n; ++r) {
        cumulative += weight_at(r);
        if (cumulative > target) return r;
    }
    return n - 1;  // rounding left target at the very top
}

// Reused buffers, so that sampling allocates nothing per token.
struct SamplerScratch {
    std::vector<float> weights;
    std::vector<std::pair<float, int32_t>> candidates;
};

// One token id from logits (V). Candidates are ordered by descending logit (ties: lower id
// first) when top-k or top-p is on, by id otherwise; u ~ U[0, 1) picks the first candidate
// whose cumulative probability exceeds u times the total kept.
int32_t sample_token(const float* logits, int64_t vocab, const SamplerConfig& config, SplitMix64& rng,
                     SamplerScratch& scratch);

}  // namespace FASTLM_ISA
}  // namespace fastlm
