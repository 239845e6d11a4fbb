// Text generation: the whole sampling loop (embedding, LSTM steps, decoder, sampler)
// in C++, with weights packed once per call and no allocation per token.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "adaptive_softmax.h"
#include "isa.h"
#include "kernels.h"
#include "sampling.h"

namespace fastlm {
namespace FASTLM_ISA {

// prompt (samples, prompt_len >= 1) warms the state from zero; out (samples, max_new)
// receives the new ids. Sample s draws from SplitMix64(seed + s), so a sample does not
// depend on how many are drawn with it. Throws NonFiniteError when a logit is NaN or
// infinite (weights that overflow float32), and Interrupted when stop_requested (polled
// every few milliseconds between tokens) returns true.
void generate(const LanguageModelView& model, const int32_t* prompt, int64_t samples, int64_t prompt_len,
              int64_t max_new, const SamplerConfig& config, uint64_t seed, int32_t* out,
              const std::function<bool()>& stop_requested = {});

}  // namespace FASTLM_ISA
}  // namespace fastlm
