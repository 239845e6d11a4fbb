#include "sampling.h"

#include <algorithm>
#include <cmath>

namespace fastlm {

int32_t sample_token(const float* logits, int64_t vocab, const SamplerConfig& config, SplitMix64& rng,
                     SamplerScratch& scratch) {
    const int64_t best = argmax(logits, vocab);
    if (config.temperature == 0.0) return static_cast<int32_t>(best);

    auto& cand = scratch.candidates;
    cand.resize(vocab);
    const double peak = logits[best];
    for (int64_t v = 0; v < vocab; ++v) cand[v] = {std::exp((double(logits[v]) - peak) / config.temperature), int32_t(v)};

    const bool ranked = config.top_k > 0 || config.top_p < 1.0;
    int64_t kept = vocab;
    if (ranked) {
        const auto by_rank = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
        if (config.top_k > 0 && config.top_k < vocab) {
            kept = config.top_k;
            std::partial_sort(cand.begin(), cand.begin() + kept, cand.end(), by_rank);
        } else {
            std::sort(cand.begin(), cand.end(), by_rank);
        }
        if (config.top_p < 1.0) {
            double total = 0.0;
            for (int64_t r = 0; r < kept; ++r) total += cand[r].first;
            // Smallest prefix whose probability reaches top_p (at least one candidate).
            double cumulative = 0.0;
            int64_t r = 0;
            while (r < kept) {
                cumulative += cand[r].first;
                ++r;
                if (cumulative >= config.top_p * total) break;
            }
            kept = r;
        }
    }
    double total = 0.0;
    for (int64_t r = 0; r < kept; ++r) total += cand[r].first;
    const double target = rng.uniform() * total;
    double cumulative = 0.0;
    for (int64_t r = 0; r < kept; ++r) {
        cumulative += cand[r].first;
        if (cumulative > target) return cand[r].second;
    }
    return cand[kept - 1].second;  // rounding left target at the very top
}

}  // namespace fastlm
