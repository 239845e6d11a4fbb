// Text generation: the whole sampling loop (embedding, LSTM steps, decoder, sampler)
// in C++, with weights packed once per call and no allocation per token.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "adaptive_softmax.h"
#include "sampling.h"

namespace fastlm {

struct LstmLayerView {
    const float *w_ih, *w_hh, *b_ih, *b_hh;
    int64_t input;
};

// Read-only views of a model's parameters in the state_dict layout.
struct LanguageModelView {
    int64_t vocab, embed, hidden;
    const float* embedding;
    std::vector<LstmLayerView> layers;
    const float *decoder_w, *decoder_b;
    // An adaptive softmax decoder instead of decoder_w / decoder_b, when adaptive_shape has clusters.
    AdaptiveShape adaptive_shape{};
    AdaptiveWeights adaptive{};
};

// prompt (samples, prompt_len >= 1) warms the state from zero; out (samples, max_new)
// receives the new ids. Sample s draws from SplitMix64(seed + s), so a sample does not
// depend on how many are drawn with it. Throws NonFiniteError when a logit is NaN or
// infinite (weights that overflow float32), and Interrupted when stop_requested (polled
// every few milliseconds between tokens) returns true.
void generate(const LanguageModelView& model, const int32_t* prompt, int64_t samples, int64_t prompt_len,
              int64_t max_new, const SamplerConfig& config, uint64_t seed, int32_t* out,
              const std::function<bool()>& stop_requested = {});

}  // namespace fastlm
