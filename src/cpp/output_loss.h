// The output layer (Linear H -> V) fused with log-softmax and mean cross-entropy.
// The (N x V) logits never exist in full, so memory does not grow with N * V: the
// gradients are computed in row chunks of kLogitChunkElements logits, or of as many as
// the decoder has weights when that is more, and the forward op alone reduces each block
// of logits while it is in cache, storing none.
#pragma once

#include <cstdint>
#include <memory>

#include "isa.h"
#include "kernels.h"

namespace fastlm {
namespace FASTLM_ISA {

constexpr int64_t kLogitChunkElements = int64_t(1) << 20;

// h (N, H), weight (V, H), bias (V), targets (N) range-checked. Writes lse (N), the
// log-sum-exp of each row's logits, and predictions (N), the arg-max; returns the mean loss.
double output_loss_forward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                           const int32_t* targets, float* lse, int32_t* predictions);

// One row of logits z (V): adds the bias in place, returns the log-sum-exp and writes the
// first arg-max to best (NumPy's argmax: the first NaN if there is one). The forward op's
// rule for rows holding a NaN or an infinity, and the scoring kernels' row pass.
float row_log_sum_exp(float* z, const float* bias, int64_t V, int32_t* best);

// A row's maximum (a NaN never enters, as in row_log_sum_exp) and its sum of
// exp(z - peak): the vector row passes, for rows that carry no bias (the adaptive softmax's).
float row_max(const float* z, int64_t V);
double row_sum_exp(const float* z, int64_t V, float peak);

// Gradients of the mean loss: dh (N, H), dweight (V, H), dbias (V). Logits are recomputed
// chunk by chunk from lse: d loss / d logits = (softmax - onehot) / N.
void output_loss_backward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                          const int32_t* targets, const float* lse, float* dh, float* dweight, float* dbias);

// Training: both passes at once, each chunk's logits computed once (saving a quarter of
// the output layer's work). Returns the mean loss and writes dh, dweight, dbias. bias and
// dbias both null: a layer without a bias (the adaptive softmax's head with
// head_bias=False), no zeros added and no column sums formed.
double output_loss_forward_backward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                                    const int32_t* targets, float* dh, float* dweight, float* dbias);

// Training's output layer without a bias for a thin h (the adaptive softmax's tails, H = 16
// or 64 against 8,000-40,000 words): the sum over rows of the cross-entropy, and dh (N, H),
// dweight (V, H) the gradients of gradient_scale times that sum. The logits are computed
// twice and never stored: once for each row's log-sum-exp (output_loss_forward's blocks),
// once, block by block, for the gradients, each block's softmax feeding both products
// while it is in cache. At H <= 64 recomputing a logit costs a few multiply-adds, less
// than writing it out and reading it back three times.
double output_loss_thin_forward_backward(const OutputShape& s, const float* h, const float* weight,
                                         const int32_t* targets, float gradient_scale, float* dh, float* dweight);

// Scoring's output layer on rows h (s.rows, H) with weight (V, H), bias (V) and targets
// (rows): per row the target's log-probability (natural log), the arg-max and the target's
// rank (how many logits exceed the target's), reduced block by block as
// output_loss_forward does, no logits stored. In pieces for threads to take as they come:
// run(item) once for every item in [0, items()), in any order, on any threads, then
// finish writes the results. No result depends on which thread ran an item. h, weight,
// bias and targets must outlive the scorer; its memory grows with rows (16 bytes per row
// and 96 vocabulary entries): callers bound the rows.
class RowScorer {
public:
    RowScorer(const OutputShape& s, const float* h, const float* weight, const float* bias, const int32_t* targets);
    ~RowScorer();
    static int64_t items_for(int64_t vocab);  // items() of a scorer of this vocabulary
    int64_t items() const;
    void run(int64_t item);
    void finish(const ScoreOutputs& out);

private:
    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace FASTLM_ISA
}  // namespace fastlm
