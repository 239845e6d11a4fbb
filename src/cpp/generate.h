// Text generation: the whole sampling loop (embedding, LSTM steps, decoder, sampler)
// in C++, with weights packed once per call and no allocation per token.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "adaptive_softmax.h"
#include "isa.h"
#include "kernels.h"
#include "sampling.h"

namespace fastlm {
namespace FASTLM_ISA {

// A generation in progress (kernels.h's GenerationSession): the recurrent state after the
// prompt and the tokens drawn so far, the samplers' generators, the packed weights. Each
// next() continues where the last one stopped without re-running anything, so a stream of
// calls of any sizes draws exactly the tokens one generate() call of the total length
// draws; probabilities() gives the next-token distribution (softmax at temperature 1,
// before any sampling rule) and draws nothing. config.suppressed (>= 0) is never drawn
// (with an adaptive decoder: drawn again). One thread at a time. stop_requested is polled
// between the prompt's tokens.
std::unique_ptr<GenerationSession> make_generation_session(const LanguageModelView& model, const int32_t* prompt,
                                                           int64_t samples, int64_t prompt_len,
                                                           const SamplerConfig& config, uint64_t seed,
                                                           const std::function<bool()>& stop_requested);

// A session's next(max_new): prompt (samples, prompt_len >= 1) warms the state from zero; out (samples, max_new)
// receives the new ids. Sample s draws from SplitMix64(seed + s), so a sample does not
// depend on how many are drawn with it. Throws NonFiniteError when a logit is NaN or
// infinite (weights that overflow float32), and Interrupted when stop_requested (polled
// every few milliseconds between tokens) returns true.
void generate(const LanguageModelView& model, const int32_t* prompt, int64_t samples, int64_t prompt_len,
              int64_t max_new, const SamplerConfig& config, uint64_t seed, int32_t* out,
              const std::function<bool()>& stop_requested = {});

}  // namespace FASTLM_ISA
}  // namespace fastlm
