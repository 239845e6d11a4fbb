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

namespace fastlm {

struct AdaptiveShape {
    int64_t rows, hidden, shortlist;  // N, H, c1
    std::vector<int64_t> widths;      // d_i, the width of each tail projection
    std::vector<int64_t> sizes;       // c_{i+1} - c_i, the words of each cluster
    int64_t clusters() const { return int64_t(sizes.size()); }
    int64_t head_size() const { return shortlist + clusters(); }
    int64_t vocab() const;
    int64_t cluster_start(int64_t i) const;  // c_i of cluster i (c_0 of cluster 0 is c1)
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

}  // namespace fastlm
