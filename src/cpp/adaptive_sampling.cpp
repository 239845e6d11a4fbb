#include "adaptive_sampling.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "activations.h"
#include "errors.h"
#include "gemm.h"
#include "optimizer.h"

namespace fastlm {
namespace FASTLM_ISA {

AdaptiveSampler::AdaptiveSampler(const AdaptiveShape& shape, const AdaptiveWeights& w)
    : shape_(shape),
      bias_(w.head_bias ? std::vector<float>(w.head_bias, w.head_bias + shape.head_size())
                        : std::vector<float>(shape.head_size(), 0.0f)),
      packed_(shape, w),
      head_(shape.head_size()),
      tails_(shape.vocab() - shape.shortlist),
      tail_ready_(shape.clusters()) {
    int64_t widest = 0;
    for (int64_t d : shape.widths) widest = std::max(widest, d);
    projected_.resize(widest);
}

void AdaptiveSampler::head_log_prob(const float* h) {
    const int64_t Vh = shape_.head_size();
    sgemm_packed(false, 1, h, shape_.hidden, packed_.head_t, 0.0f, head_.data(), Vh);
    for (int64_t j = 0; j < Vh; ++j) head_[j] += bias_[j];
    if (!all_finite(head_.data(), Vh))
        throw NonFiniteError("the adaptive decoder's logits hold NaN or infinity: the weights overflow float32");
    log_softmax_row(head_.data(), Vh, 0.0f);
    std::fill(tail_ready_.begin(), tail_ready_.end(), 0);
}

const float* AdaptiveSampler::tail_log_prob(int64_t i, const float* h) {
    float* tail = tails_.data() + (shape_.cluster_start(i) - shape_.shortlist);
    if (!tail_ready_[i]) {
        const int64_t d = shape_.widths[i], m = shape_.sizes[i];
        sgemm_packed(false, 1, h, shape_.hidden, packed_.projection_t[i], 0.0f, projected_.data(), d);
        sgemm_packed(false, 1, projected_.data(), d, packed_.out_t[i], 0.0f, tail, m);
        if (!all_finite(tail, m))
            throw NonFiniteError("the adaptive decoder's logits hold NaN or infinity: the weights overflow float32");
        log_softmax_row(tail, m, 0.0f);
        tail_ready_[i] = 1;
    }
    return tail;
}

int32_t AdaptiveSampler::greedy(const float* h) {
    const int64_t c1 = shape_.shortlist;
    int64_t best = argmax(head_.data(), c1);
    float best_lp = head_[best];
    for (int64_t i = 0; i < shape_.clusters(); ++i) {
        if (!(head_[c1 + i] > best_lp)) continue;  // no word of the cluster can beat best
        const float* tail = tail_log_prob(i, h);
        const int64_t arg = argmax(tail, shape_.sizes[i]);
        const float lp = head_[c1 + i] + tail[arg];
        if (lp > best_lp) {
            best_lp = lp;
            best = shape_.cluster_start(i) + arg;
        }
    }
    return int32_t(best);
}

int32_t AdaptiveSampler::sample_full(const float* h, const SamplerConfig& config, SplitMix64& rng) {
    const int64_t c1 = shape_.shortlist, V = shape_.vocab();
    full_.resize(V);
    std::copy(head_.begin(), head_.begin() + c1, full_.begin());
    for (int64_t i = 0; i < shape_.clusters(); ++i) {
        const float* tail = tail_log_prob(i, h);
        float* dst = full_.data() + shape_.cluster_start(i);
        for (int64_t j = 0; j < shape_.sizes[i]; ++j) dst[j] = tail[j] + head_[c1 + i];
    }
    return sample_token(full_.data(), V, config, rng, scratch_);
}

int32_t AdaptiveSampler::sample_by_rejection(const float* h, double temperature, SplitMix64& rng) {
    const int64_t c1 = shape_.shortlist, Vh = shape_.head_size(), n = shape_.clusters();
    const float inv_t = float(1.0 / temperature);
    const bool factorises = temperature == 1.0;  // Z_c = 1: no rejection step
    std::vector<double> bound(n);
    for (int64_t i = 0; i < n; ++i)
        bound[i] = temperature > 1.0 ? std::pow(double(shape_.sizes[i]), 1.0 - 1.0 / temperature) : 1.0;
    const float peak = head_[argmax(head_.data(), Vh)];
    weights_.resize(Vh);
    for (int64_t j = 0; j < Vh; ++j) weights_[j] = exp_approx((head_[j] - peak) * inv_t);
    while (true) {
        const int64_t j = draw(Vh, [&](int64_t r) { return r < c1 ? weights_[r] : weights_[r] * bound[r - c1]; },
                               rng);
        if (j < c1) return int32_t(j);
        const int64_t i = j - c1, m = shape_.sizes[i];
        const bool known = tail_ready_[i];
        const float* tail = tail_log_prob(i, h);
        if (!factorises && !known) {
            double z = 0.0;  // Z_c: tail log-probabilities are <= 0, so no shift is needed
            for (int64_t k = 0; k < m; ++k) z += exp_approx(tail[k] * inv_t);
            const bool accepted = rng.uniform() * bound[i] < z;
            bound[i] = z;
            if (!accepted) continue;
        }
        const float tail_peak = tail[argmax(tail, m)];
        const int64_t k = draw(m, [&](int64_t r) { return double(exp_approx((tail[r] - tail_peak) * inv_t)); }, rng);
        return int32_t(shape_.cluster_start(i) + k);
    }
}

int32_t AdaptiveSampler::sample(const float* h, const SamplerConfig& config, SplitMix64& rng) {
    head_log_prob(h);
    // A temperature whose reciprocal overflows float is greedy in the limit (as sample_token).
    if (config.temperature == 0.0 || 1.0 / config.temperature > double(FLT_MAX)) return greedy(h);
    if (config.top_k > 0 || config.top_p < 1.0) return sample_full(h, config, rng);
    return sample_by_rejection(h, config.temperature, rng);
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
