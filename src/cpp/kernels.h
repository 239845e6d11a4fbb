// The kernels as the rest of the extension sees them: one table of entry points per
// instruction set, and the plain argument types those entry points share.
//
// Each kernel source is compiled once per instruction set (see isa.h); kernel_table.cpp
// fills a Kernels table from each copy, and dispatch.cpp chooses one table once, at
// import. bindings.cpp calls every kernel through kernels(). Nothing in this header
// depends on an instruction set: it is compiled into the baseline code and into every
// kernel copy alike, so it holds declarations and argument structs (whatever inline code
// they have is compiled into each copy privately: see CMakeLists.txt).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fastlm {

// ------------------------------------------------------------------ argument types

struct LstmShape {
    int64_t batch, steps, input, hidden;
};

struct OutputShape {
    int64_t rows, hidden, vocab;
};

struct AdamConfig {
    double lr, beta1, beta2, eps, weight_decay;
};

struct SgdConfig {
    double lr, momentum, weight_decay;
    bool nesterov;
};

struct SamplerConfig {
    double temperature;  // 0: greedy
    int64_t top_k;       // 0: off
    double top_p;        // 1: off
    int32_t suppressed = -1;  // a token id never drawn, or -1
};

struct LstmLayerView {
    const float *w_ih, *w_hh, *b_ih, *b_hh;
    int64_t input;
};


using FloatSpans = std::vector<std::pair<float*, int64_t>>;

// One parameter of clipped_sgd_update: n floats of param, its gradient and (with momentum)
// buffer; with rows set, the gradient is in row form (as in GradientSpan): grad holds
// (count, dim) values of rows of the (n / dim, dim) gradient, which is 0 elsewhere.
// skip_absent_rows: see sgd_update_rows.
struct SgdSpan {
    float* param;
    const float* grad;
    float* buf;
    int64_t n;
    const int32_t* rows = nullptr;
    int64_t count = 0, dim = 0;
    bool skip_absent_rows = false;
};

// One gradient of clip_grad_norm_rows: n floats at data when rows is null; else a (vocab, dim)
// gradient that is 0 outside rows (count of them, strictly increasing), whose values data
// holds as (count, dim), and n = vocab * dim, the length of that dense gradient.
struct GradientSpan {
    float* data;
    int64_t n;
    const int32_t* rows;
    int64_t count, dim;
};

// The adaptive softmax's sizes, weights and gradients (adaptive_softmax.h).
struct AdaptiveShape {
    int64_t rows, hidden, shortlist;  // N, H, c1
    std::vector<int64_t> widths;      // d_i, the width of each tail projection
    std::vector<int64_t> sizes;       // c_{i+1} - c_i, the words of each cluster
    int64_t clusters() const { return int64_t(sizes.size()); }
    int64_t head_size() const { return shortlist + clusters(); }
    int64_t vocab() const { return cluster_start(clusters()); }
    int64_t cluster_start(int64_t i) const {  // c_i of cluster i (c_0 of cluster 0 is c1)
        int64_t start = shortlist;
        for (int64_t k = 0; k < i; ++k) start += sizes[k];
        return start;
    }
};

// Read-only weights in the state_dict layout: head (c1 + n, H), head_bias (c1 + n) or null,
// projection[i] (d_i, H), out[i] (sizes[i], d_i).
struct AdaptiveWeights {
    const float* head;
    const float* head_bias;
    std::vector<const float*> projection, out;
};

// Gradients of the same shapes (head_bias null when the head has no bias).
struct AdaptiveGradients {
    float* head;
    float* head_bias;
    std::vector<float*> projection, out;
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

// Per scored token of score_sequences / score_streams / output_scores (scoring.h).
struct ScoreOutputs {
    float* log_probs;
    int32_t* predictions;
    int32_t* ranks;
};

// How many tokens of a sequence of this length are scored: all of them after a bos token
// (bos >= 0), else all but the first, which is context only.
inline int64_t scored_count(int64_t length, int32_t bos) { return bos >= 0 ? length : (length > 0 ? length - 1 : 0); }

// A generation in progress (generate.h): made by Kernels::generation_session.
class GenerationSession {
public:
    virtual ~GenerationSession() = default;
    virtual int64_t samples() const = 0;
    virtual int64_t vocab() const = 0;
    virtual void next(int64_t count, int32_t* out, int64_t ld, const std::function<bool()>& stop_requested) = 0;
    virtual void probabilities(float* out) = 0;
};

// ------------------------------------------------------------------ the table
// One entry per kernel the bindings call; each is documented at its declaration in the
// kernel's own header (lstm.h, output_loss.h, ...).

struct Kernels {
    const char* isa;  // "baseline", "avx2" or "avx512"

    void (*embedding_forward)(const float* weight, int64_t dim, const int32_t* ids, int64_t n, float* out);
    void (*embedding_backward)(const float* dout, int64_t dim, const int32_t* ids, int64_t n, int64_t vocab_size,
                               float* dweight);
    int64_t (*embedding_backward_sparse)(const float* dout, int64_t dim, const int32_t* ids, int64_t n,
                                         int32_t* rows, float* grad);

    void (*lstm_forward)(const LstmShape& s, const float* x, const float* w_ih, const float* w_hh,
                         const float* b_ih, const float* b_hh, const float* h0, const float* c0, float* hs,
                         float* cs, float* gates);
    void (*lstm_backward)(const LstmShape& s, const float* dhs, const float* dh_n, const float* dc_n,
                          const float* x, const float* w_ih, const float* w_hh, const float* h0, const float* c0,
                          const float* hs, const float* cs, const float* gates, float* dx, float* dw_ih,
                          float* dw_hh, float* db, float* dh0, float* dc0);

    double (*output_loss_forward)(const OutputShape& s, const float* h, const float* weight, const float* bias,
                                  const int32_t* targets, float* lse, int32_t* predictions);
    void (*output_loss_backward)(const OutputShape& s, const float* h, const float* weight, const float* bias,
                                 const int32_t* targets, const float* lse, float* dh, float* dweight, float* dbias);
    double (*output_loss_forward_backward)(const OutputShape& s, const float* h, const float* weight,
                                           const float* bias, const int32_t* targets, float* dh, float* dweight,
                                           float* dbias);

    double (*adaptive_loss_forward)(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                                    const int32_t* targets, float* log_prob, int32_t* predictions);
    double (*adaptive_loss_forward_backward)(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                                             const int32_t* targets, float* dh, const AdaptiveGradients& g);
    void (*adaptive_log_prob)(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w, float* out);

    bool (*all_finite)(const float* x, int64_t n);
    void (*adam_update)(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
                        const AdamConfig& config);
    void (*adam_update_rows)(float* param, int64_t dim, int64_t vocab, const int32_t* rows, const float* grad,
                             int64_t count, float* m, float* v, int64_t step, const AdamConfig& config);
    void (*sparse_adam_update)(float* param, int64_t dim, const int32_t* rows, const float* grad, int64_t count,
                               float* m, float* v, const int32_t* slots, int64_t step, const AdamConfig& config);
    void (*sparse_sgd_update)(float* param, int64_t dim, const int32_t* rows, const float* grad, int64_t count,
                              double lr);
    void (*sgd_update)(float* param, const float* grad, float* buf, int64_t n, int64_t step,
                       const SgdConfig& config);
    void (*sgd_update_rows)(float* param, int64_t dim, int64_t vocab, const int32_t* rows, const float* grad,
                            int64_t count, float* buf, int64_t step, const SgdConfig& config,
                            bool skip_absent_rows);
    double (*clip_grad_norm)(const FloatSpans& arrays, double max_norm);
    double (*clip_grad_norm_rows)(const std::vector<GradientSpan>& grads, double max_norm);
    double (*clipped_sgd_update)(const std::vector<SgdSpan>& spans, int64_t step, double max_norm,
                                 const SgdConfig& config);

    void (*generate)(const LanguageModelView& model, const int32_t* prompt, int64_t samples, int64_t prompt_len,
                     int64_t max_new, const SamplerConfig& config, uint64_t seed, int32_t* out,
                     const std::function<bool()>& stop_requested);

    double (*fma_peak_gflops)(double seconds);
    std::unique_ptr<GenerationSession> (*generation_session)(const LanguageModelView& model, const int32_t* prompt,
                                                             int64_t samples, int64_t prompt_len,
                                                             const SamplerConfig& config, uint64_t seed,
                                                             const std::function<bool()>& stop_requested);
    void (*score_sequences)(const LanguageModelView& model, const int32_t* ids, const int64_t* offsets,
                            int64_t count, int32_t bos, int64_t batch_size, const ScoreOutputs& out,
                            const std::function<bool()>& stop_requested);
    void (*score_streams)(const LanguageModelView& model, const int32_t* x, const int32_t* y, int64_t batch,
                          int64_t steps, float* h, float* c, const ScoreOutputs& out,
                          const std::function<bool()>& stop_requested);
    void (*output_scores)(const OutputShape& s, const float* h, const float* weight, const float* bias,
                          const int32_t* targets, const ScoreOutputs& out);
    void (*prediction_counts)(const int32_t* targets, const int32_t* predictions, int64_t n, int64_t vocab,
                              int64_t* counts);
};

// The table in use, chosen at import (dispatch.cpp): the best instruction set this CPU
// runs, or the one FASTLM_ISA names.
const Kernels& kernels();

// The instruction sets this build holds kernels for and this CPU can run, lowest first.
std::vector<std::string> isa_available();

}  // namespace fastlm
