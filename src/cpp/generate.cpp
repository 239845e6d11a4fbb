#include "generate.h"

#include <cmath>
#include <cstring>
#include <string>

#include "adaptive_sampling.h"
#include "adaptive_softmax.h"
#include "embedding.h"
#include "errors.h"
#include "gemm.h"
#include "interrupt.h"
#include "lstm.h"
#include "optimizer.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace {

// The recurrent state of every sample and the buffers one step needs.
struct Stepper {
    const LanguageModelView& model;
    int64_t samples;
    std::vector<PackedLstmLayer> layers;
    std::vector<std::vector<float>> h, c;  // per layer, (samples, H)
    std::vector<float> x, gates;

    Stepper(const LanguageModelView& m, int64_t s) : model(m), samples(s) {
        const int64_t H = m.hidden, G = 4 * H;
        for (const LstmLayerView& l : m.layers) {
            layers.emplace_back(l, H);
            h.emplace_back(s * H, 0.0f);
            c.emplace_back(s * H, 0.0f);
        }
        x.resize(s * m.embed);
        gates.resize(s * G);
    }

    // Feed one token per sample through all layers; afterwards h.back() is the top state.
    // Row-invariant products: a sample's state and logits do not depend on how many
    // samples run beside it (sample s of num_samples is the generation of seed + s alone).
    void step(const int32_t* tokens) {
        const int64_t H = model.hidden, G = 4 * H;
        embedding_forward(model.embedding, model.embed, tokens, samples, x.data());
        const float* input = x.data();
        for (size_t k = 0; k < layers.size(); ++k) {
            const int64_t width = model.layers[k].input;
            sgemm_packed_row_invariant(false, samples, input, width, layers[k].w_ih_t, 0.0f, gates.data(), G);
            sgemm_packed_row_invariant(false, samples, h[k].data(), H, layers[k].w_hh_t, 1.0f, gates.data(), G);
            for (int64_t s = 0; s < samples; ++s)
                lstm_cell_forward(H, layers[k].bias.data(), gates.data() + s * G, c[k].data() + s * H,
                                  c[k].data() + s * H, h[k].data() + s * H);
            input = h[k].data();
        }
    }
};

}  // namespace

struct SessionState {
    const LanguageModelView model;  // a copy: the caller's view may go out of scope
    Stepper stepper;
    SamplerConfig config;
    std::vector<SplitMix64> rngs;
    std::vector<int32_t> tokens;  // the last tokens drawn, not yet fed to the LSTM
    bool pending = false;
    int64_t drawn = 0;  // tokens drawn per sample so far
    // The decoder: a full softmax (packed weights and a logits row per sample) or an adaptive one.
    PackedB decoder_t;
    std::vector<float> logits;
    SamplerScratch scratch;
    std::unique_ptr<AdaptiveSampler> adaptive;

    SessionState(const LanguageModelView& m, int64_t samples, const SamplerConfig& c)
        : model(m), stepper(model, samples), config(c), tokens(samples) {
        if (adaptive_decoder()) {
            adaptive.reset(new AdaptiveSampler(model.adaptive_shape, model.adaptive));
        } else {
            decoder_t = PackedB(m.decoder_w, m.hidden, true, m.hidden, m.vocab);
            logits.resize(samples * m.vocab);
        }
    }

    bool adaptive_decoder() const { return model.adaptive_shape.clusters() > 0; }

    // Feeds the tokens drawn last: generation steps only when a next token is asked for,
    // so the final token of a call costs no LSTM step.
    void advance() {
        if (pending) stepper.step(tokens.data());
        pending = false;
    }

    // Every sample's logits after advance() (full softmax only).
    void compute_logits() {
        const int64_t V = model.vocab;
        sgemm_packed_row_invariant(false, stepper.samples, stepper.h.back().data(), model.hidden, decoder_t, 0.0f,
                                   logits.data(), V);
        for (int64_t s = 0; s < stepper.samples; ++s) {
            float* z = logits.data() + s * V;
            for (int64_t v = 0; v < V; ++v) z[v] += model.decoder_b[v];
            if (!all_finite(z, V))
                throw NonFiniteError("the logits at new token " + std::to_string(drawn + 1) + " of sample " +
                                     std::to_string(s) + " hold NaN or infinity: the weights overflow float32");
        }
    }

    // An adaptive decoder's draw that is not the suppressed token: drawn again (the same
    // generator, so still a pure function of the seed) while it is; a greedy pick of it is
    // an error, since drawing again would pick it again.
    int32_t adaptive_sample(const float* h, SplitMix64& rng) {
        for (int attempt = 0; attempt < kSuppressedRedraws; ++attempt) {
            const int32_t token = adaptive->sample(h, config, rng);
            if (token != config.suppressed) return token;
            if (config.temperature == 0.0) break;
        }
        throw std::invalid_argument("the suppressed token (<unk>) is this adaptive model's choice at every draw: "
                                    "generate with suppress_unk=False");
    }
    static constexpr int kSuppressedRedraws = 1000;
};

class Session final : public fastlm::GenerationSession {
public:
    Session(const LanguageModelView& model, const int32_t* prompt, int64_t samples, int64_t prompt_len,
            const SamplerConfig& config, uint64_t seed, const std::function<bool()>& stop_requested);
    int64_t samples() const override;
    int64_t vocab() const override;
    void next(int64_t count, int32_t* out, int64_t ld, const std::function<bool()>& stop_requested) override;
    void probabilities(float* out) override;

private:
    std::unique_ptr<SessionState> state_;
};

Session::Session(const LanguageModelView& model, const int32_t* prompt, int64_t samples,
                                     int64_t prompt_len, const SamplerConfig& config, uint64_t seed,
                                     const std::function<bool()>& stop_requested)
    : state_(new SessionState(model, samples, config)) {
    InterruptPoll poll(stop_requested);
    std::vector<int32_t> column(samples);
    for (int64_t p = 0; p < prompt_len; ++p) {
        for (int64_t s = 0; s < samples; ++s) column[s] = prompt[s * prompt_len + p];
        state_->stepper.step(column.data());
        poll();
    }
    for (int64_t s = 0; s < samples; ++s) state_->rngs.emplace_back(seed + uint64_t(s));
}

int64_t Session::samples() const { return state_->stepper.samples; }

int64_t Session::vocab() const { return state_->model.vocab; }

void Session::next(int64_t count, int32_t* out, int64_t ld, const std::function<bool()>& stop_requested) {
    InterruptPoll poll(stop_requested);
    SessionState& st = *state_;
    const int64_t V = st.model.vocab, H = st.model.hidden;
    const int32_t suppressed = st.config.suppressed;
    for (int64_t n = 0; n < count; ++n) {
        st.advance();
        if (st.adaptive_decoder()) {
            for (int64_t s = 0; s < st.stepper.samples; ++s)
                st.tokens[s] = st.adaptive_sample(st.stepper.h.back().data() + s * H, st.rngs[s]);
        } else {
            st.compute_logits();
            for (int64_t s = 0; s < st.stepper.samples; ++s) {
                float* z = st.logits.data() + s * V;
                if (suppressed >= 0 && suppressed < V) z[suppressed] = -INFINITY;
                st.tokens[s] = sample_token(z, V, st.config, st.rngs[s], st.scratch);
            }
        }
        for (int64_t s = 0; s < st.stepper.samples; ++s) out[s * ld + n] = st.tokens[s];
        st.pending = true;
        ++st.drawn;
        poll();
    }
}

void Session::probabilities(float* out) {
    SessionState& st = *state_;
    st.advance();
    const int64_t V = st.model.vocab, samples = st.stepper.samples;
    if (st.adaptive_decoder()) {
        AdaptiveShape shape = st.model.adaptive_shape;
        shape.rows = samples;
        adaptive_log_prob(shape, st.stepper.h.back().data(), st.model.adaptive, out);
        for (int64_t i = 0; i < samples * V; ++i) out[i] = std::exp(out[i]);
        return;
    }
    st.compute_logits();
    for (int64_t s = 0; s < samples; ++s) {
        const float* z = st.logits.data() + s * V;
        float peak = -INFINITY;
        for (int64_t v = 0; v < V; ++v) peak = z[v] > peak ? z[v] : peak;
        double total = 0.0;
        for (int64_t v = 0; v < V; ++v) total += std::exp(double(z[v]) - peak);
        for (int64_t v = 0; v < V; ++v) out[s * V + v] = static_cast<float>(std::exp(double(z[v]) - peak) / total);
    }
}

void generate(const LanguageModelView& model, const int32_t* prompt, int64_t samples, int64_t prompt_len,
              int64_t max_new, const SamplerConfig& config, uint64_t seed, int32_t* out,
              const std::function<bool()>& stop_requested) {
    if (max_new == 0) return;
    Session session(model, prompt, samples, prompt_len, config, seed, stop_requested);
    session.next(max_new, out, max_new, stop_requested);
}

std::unique_ptr<GenerationSession> make_generation_session(const LanguageModelView& model, const int32_t* prompt,
                                                           int64_t samples, int64_t prompt_len,
                                                           const SamplerConfig& config, uint64_t seed,
                                                           const std::function<bool()>& stop_requested) {
    return std::unique_ptr<GenerationSession>(
        new Session(model, prompt, samples, prompt_len, config, seed, stop_requested));
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
