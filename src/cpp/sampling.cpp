#include "sampling.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "activations.h"

namespace fastlm {
namespace FASTLM_ISA {

int32_t sample_token(const float* logits, int64_t vocab, const SamplerConfig& config, SplitMix64& rng,
                     SamplerScratch& scratch) {
    const int64_t best = argmax(logits, vocab);
    // A temperature whose reciprocal overflows float is greedy in the limit; computed
    // as written it would give the best logit 0 * inf = NaN as its weight.
    if (config.temperature == 0.0 || 1.0 / config.temperature > double(FLT_MAX)) return static_cast<int32_t>(best);

    // Unnormalised probabilities exp((z - max) / T), as vectorised float exps: with a
    // 10^4 vocabulary, double-precision libm exps would cost more than the model step.
    auto& weights = scratch.weights;
    weights.resize(vocab);
    const float peak = logits[best], inv_temperature = static_cast<float>(1.0 / config.temperature);
    for (int64_t v = 0; v < vocab; ++v) weights[v] = exp_approx((logits[v] - peak) * inv_temperature);
    // exp_approx saturates at e^-87 rather than reaching 0: a suppressed token gets no weight at all.
    if (config.suppressed >= 0 && config.suppressed < vocab) weights[config.suppressed] = 0.0f;

    if (config.top_k == 0 && config.top_p >= 1.0)  // the whole vocabulary, in id order
        return static_cast<int32_t>(draw(vocab, [&](int64_t v) { return weights[v]; }, rng));

    auto& cand = scratch.candidates;
    cand.resize(vocab);
    for (int64_t v = 0; v < vocab; ++v) cand[v] = {weights[v], int32_t(v)};
    const auto by_rank = [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    int64_t kept = vocab;
    if (config.top_k > 0 && config.top_k < vocab) {
        kept = config.top_k;
        std::partial_sort(cand.begin(), cand.begin() + kept, cand.end(), by_rank);
    } else {
        std::sort(cand.begin(), cand.end(), by_rank);
    }
    if (config.top_p < 1.0) {  // the smallest prefix whose probability reaches top_p
        double total = 0.0;
        for (int64_t r = 0; r < kept; ++r) total += cand[r].first;
        double cumulative = 0.0;
        int64_t r = 0;
        while (r < kept) {
            cumulative += cand[r].first;
            ++r;
            if (cumulative >= config.top_p * total) break;
        }
        kept = r;
    }
    return cand[draw(kept, [&](int64_t r) { return cand[r].first; }, rng)].second;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
