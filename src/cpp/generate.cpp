#include "generate.h"

#include <cstring>
#include <string>

#include "adaptive_sampling.h"
#include "embedding.h"
#include "errors.h"
#include "gemm.h"
#include "interrupt.h"
#include "lstm.h"
#include "optimizer.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace {

struct PackedLayer {
    PackedB w_ih_t, w_hh_t;
    std::vector<float> bias;
};

// The recurrent state of every sample and the buffers one step needs.
struct Stepper {
    const LanguageModelView& model;
    int64_t samples;
    std::vector<PackedLayer> layers;
    std::vector<std::vector<float>> h, c;  // per layer, (samples, H)
    std::vector<float> x, gates;

    Stepper(const LanguageModelView& m, int64_t s) : model(m), samples(s) {
        const int64_t H = m.hidden, G = 4 * H;
        for (const LstmLayerView& l : m.layers) {
            PackedLayer p{PackedB(l.w_ih, l.input, true, l.input, G), PackedB(l.w_hh, H, true, H, G),
                          std::vector<float>(G)};
            for (int64_t j = 0; j < G; ++j) p.bias[j] = l.b_ih[j] + l.b_hh[j];
            layers.push_back(std::move(p));
            h.emplace_back(s * H, 0.0f);
            c.emplace_back(s * H, 0.0f);
        }
        x.resize(s * m.embed);
        gates.resize(s * G);
    }

    // Feed one token per sample through all layers; afterwards h.back() is the top state.
    void step(const int32_t* tokens) {
        const int64_t H = model.hidden, G = 4 * H;
        embedding_forward(model.embedding, model.embed, tokens, samples, x.data());
        const float* input = x.data();
        for (size_t k = 0; k < layers.size(); ++k) {
            const int64_t width = model.layers[k].input;
            sgemm_packed(false, samples, input, width, layers[k].w_ih_t, 0.0f, gates.data(), G);
            sgemm_packed(false, samples, h[k].data(), H, layers[k].w_hh_t, 1.0f, gates.data(), G);
            for (int64_t s = 0; s < samples; ++s)
                lstm_cell_forward(H, layers[k].bias.data(), gates.data() + s * G, c[k].data() + s * H,
                                  c[k].data() + s * H, h[k].data() + s * H);
            input = h[k].data();
        }
    }
};

}  // namespace

void generate(const LanguageModelView& model, const int32_t* prompt, int64_t samples, int64_t prompt_len,
              int64_t max_new, const SamplerConfig& config, uint64_t seed, int32_t* out,
              const std::function<bool()>& stop_requested) {
    if (max_new == 0) return;
    InterruptPoll poll(stop_requested);
    const int64_t V = model.vocab, H = model.hidden;
    Stepper stepper(model, samples);
    std::vector<int32_t> tokens(samples);
    for (int64_t p = 0; p < prompt_len; ++p) {
        for (int64_t s = 0; s < samples; ++s) tokens[s] = prompt[s * prompt_len + p];
        stepper.step(tokens.data());
        poll();
    }
    std::vector<SplitMix64> rngs;
    for (int64_t s = 0; s < samples; ++s) rngs.emplace_back(seed + uint64_t(s));
    if (model.adaptive_shape.clusters() > 0) {
        AdaptiveSampler sampler(model.adaptive_shape, model.adaptive);
        for (int64_t n = 0; n < max_new; ++n) {
            for (int64_t s = 0; s < samples; ++s) {
                tokens[s] = sampler.sample(stepper.h.back().data() + s * H, config, rngs[s]);
                out[s * max_new + n] = tokens[s];
            }
            if (n + 1 < max_new) stepper.step(tokens.data());
            poll();
        }
        return;
    }
    const PackedB decoder_t(model.decoder_w, H, true, H, V);
    std::vector<float> logits(samples * V);
    SamplerScratch scratch;
    for (int64_t n = 0; n < max_new; ++n) {
        sgemm_packed(false, samples, stepper.h.back().data(), H, decoder_t, 0.0f, logits.data(), V);
        for (int64_t s = 0; s < samples; ++s) {
            float* z = logits.data() + s * V;
            for (int64_t v = 0; v < V; ++v) z[v] += model.decoder_b[v];
            if (!all_finite(z, V))
                throw NonFiniteError("the logits at new token " + std::to_string(n + 1) + " of sample " +
                                     std::to_string(s) + " hold NaN or infinity: the weights overflow float32");
            tokens[s] = sample_token(z, V, config, rngs[s], scratch);
            out[s * max_new + n] = tokens[s];
        }
        if (n + 1 < max_new) stepper.step(tokens.data());
        poll();
    }
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
