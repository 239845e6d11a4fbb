// Adaptive softmax (Grave et al. 2017), exactly torch.nn.AdaptiveLogSoftmaxWithLoss: a head
// Linear(H, c1 + n) over the shortlist [0, c1) and one column per cluster, and per cluster i
// a tail Linear(H, d_i, no bias) then Linear(d_i, c_{i+1} - c_i, no bias). log p(w) is the
// head's log-softmax at w for shortlist words, and for a word of cluster i the head's
// log-softmax at column c1 + i plus the tail's log-softmax at w - c_i.
//
// Every pass is built from the fused output layer of output_loss.h, so no (rows x V) buffer
// exists: the head runs over all rows, each tail over the rows whose target falls in it.
#pragma once

#include <cstdint>
#include <vector>

#include "gemm.h"
#include "isa.h"
#include "kernels.h"

namespace fastlm {
namespace FASTLM_ISA {

// Evaluation: log_prob (N) the exact log-probability of each target, predictions (N) the
// arg-max of the full distribution (as torch's predict: a cluster's tail is computed only
// for rows where that cluster could still hold the maximum). Returns the mean loss.
double adaptive_loss_forward(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                             const int32_t* targets, float* log_prob, int32_t* predictions);

// Training: mean loss and its gradients dh (N, H) and every weight's, in one fused pass.
double adaptive_loss_forward_backward(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                                      const int32_t* targets, float* dh, const AdaptiveGradients& g);

// x (n) <- log_softmax(x) + shift, for one row.
void log_softmax_row(float* x, int64_t n, float shift);

// The full distribution for whoever asks: out (N, V) = log p(w | h_r).
void adaptive_log_prob(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w, float* out);

// Every weight of the decoder packed as adaptive_log_prob multiplies it, for callers that
// compute the full distribution of many row chunks (scoring) or draw token after token
// (AdaptiveSampler): packed once, not per chunk or token.
struct PackedAdaptive {
    PackedB head_t;
    std::vector<PackedB> projection_t, out_t;
    PackedAdaptive(const AdaptiveShape& s, const AdaptiveWeights& w);
};

// adaptive_log_prob with the weights already packed.
void adaptive_log_prob_packed(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                              const PackedAdaptive& packed, float* out);

// How many weights the decoder has (head, projections and tails): the scale of a row
// chunk's buffer that costs no more memory than the weights themselves.
int64_t adaptive_weight_count(const AdaptiveShape& s);

}  // namespace FASTLM_ISA
}  // namespace fastlm
