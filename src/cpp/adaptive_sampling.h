// Drawing the next token from an adaptive softmax without computing every cluster.
//
// p(w) = p_head(c) p(w | c) for a word w of cluster c (a shortlist word is its own "cluster"
// with p(w | c) = 1). At temperature T the target is p(w)^(1/T), which factorises as
// p_head(c)^(1/T) Z_c p_T(w | c), with Z_c = sum over c's words of p(w | c)^(1/T) and
// p_T(w | c) the tail's own softmax at temperature T. Z_c = 1 at T = 1, so the draw is the
// head's, then the chosen cluster's tail. Otherwise Z_c is bounded without computing the
// tail (Z_c <= 1 for T < 1; Z_c <= size_c^(1 - 1/T) for T > 1, its value for a uniform tail),
// and the cluster is drawn by rejection: propose c from p_head(c)^(1/T) times its bound,
// compute c's tail, accept with probability Z_c / bound, and otherwise replace the bound by
// Z_c and propose again. Each cluster's tail is computed at most once per token; the result
// is an exact draw from p(w)^(1/T).
#pragma once

#include <cstdint>
#include <vector>

#include "adaptive_softmax.h"
#include "isa.h"
#include "sampling.h"

namespace fastlm {
namespace FASTLM_ISA {

class AdaptiveSampler {
public:
    // shape.rows is ignored; the weights are packed once, here.
    AdaptiveSampler(const AdaptiveShape& shape, const AdaptiveWeights& weights);

    // One token after the top hidden state h (H). Greedy (temperature 0) gives the arg-max
    // of the full distribution, searching a cluster only where it can hold the maximum;
    // top-k and top-p sample from the full distribution (every cluster computed).
    int32_t sample(const float* h, const SamplerConfig& config, SplitMix64& rng);

private:
    void head_log_prob(const float* h);                 // head_ <- the head's log-softmax
    const float* tail_log_prob(int64_t i, const float* h);  // cluster i's log p(w | c), cached
    int32_t greedy(const float* h);
    int32_t sample_full(const float* h, const SamplerConfig& config, SplitMix64& rng);
    int32_t sample_by_rejection(const float* h, double temperature, SplitMix64& rng);

    AdaptiveShape shape_;
    std::vector<float> bias_;
    PackedAdaptive packed_;
    std::vector<float> head_, projected_, tails_, full_;  // tails_: every cluster's, at cluster_start - c1
    std::vector<char> tail_ready_;
    std::vector<double> weights_;
    SamplerScratch scratch_;
};

}  // namespace FASTLM_ISA
}  // namespace fastlm
