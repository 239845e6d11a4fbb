#include "adaptive_softmax.h"

#include <algorithm>
#include <cmath>

#include "activations.h"
#include "allocator.h"
#include "gemm.h"
#include "output_loss.h"
#include "parallel.h"

namespace fastlm {
namespace FASTLM_ISA {

void log_softmax_row(float* x, int64_t n, float shift) {
    float peak = -INFINITY;
    for (int64_t j = 0; j < n; ++j) peak = x[j] > peak ? x[j] : peak;
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += exp_approx(x[j] - peak);
    const float offset = peak + float(std::log(sum)) - shift;
    for (int64_t j = 0; j < n; ++j) x[j] -= offset;
}

namespace {

// Rows of the head's logits held at once where they must be held (prediction, full
// log-probabilities): a bound on memory that does not grow with N.
constexpr int64_t kRowChunk = 256;

// Which head column each target selects (the word itself, or its cluster's column), and
// the rows of each cluster in row order.
struct Routing {
    std::vector<int32_t> head_targets;
    std::vector<std::vector<int64_t>> cluster_rows;
};

Routing route(const AdaptiveShape& s, const int32_t* targets) {
    Routing r{std::vector<int32_t>(s.rows), std::vector<std::vector<int64_t>>(s.clusters())};
    std::vector<int64_t> ends(s.clusters());
    for (int64_t i = 0; i < s.clusters(); ++i) ends[i] = s.cluster_start(i + 1);
    for (int64_t row = 0; row < s.rows; ++row) {
        const int32_t t = targets[row];
        if (t < s.shortlist) {
            r.head_targets[row] = t;
            continue;
        }
        const int64_t i = std::upper_bound(ends.begin(), ends.end(), int64_t(t)) - ends.begin();
        r.head_targets[row] = int32_t(s.shortlist + i);
        r.cluster_rows[i].push_back(row);
    }
    return r;
}

// out (rows.size() x H) <- the listed rows of h.
void gather_rows(const float* h, int64_t H, const std::vector<int64_t>& rows, float* out) {
    const int64_t n = int64_t(rows.size());
#pragma omp parallel for if (n * H >= kParallelMinWork) schedule(static)
    for (int64_t r = 0; r < n; ++r) std::copy(h + rows[r] * H, h + rows[r] * H + H, out + r * H);
}

// Dot product accumulated in double, for the few logits needed one at a time.
float dot(const float* a, const float* b, int64_t n) {
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) sum += double(a[k]) * double(b[k]);
    return float(sum);
}

// The head's bias, or zeros when it has none (torch's head_bias=False), for the fused
// output layer, which always adds one.
std::vector<float> head_bias_or_zeros(const AdaptiveShape& s, const AdaptiveWeights& w) {
    return w.head_bias ? std::vector<float>(w.head_bias, w.head_bias + s.head_size())
                       : std::vector<float>(s.head_size(), 0.0f);
}

// One cluster's tail for the rows routed to it (n > 0): its projection p (n x d) of h.
struct TailInput {
    ScratchFloats h_rows, p;
    TailInput(const AdaptiveShape& s, int64_t i, const float* h, const std::vector<int64_t>& rows,
              const AdaptiveWeights& w)
        : h_rows(scratch_floats(int64_t(rows.size()) * s.hidden)),
          p(scratch_floats(int64_t(rows.size()) * s.widths[i])) {
        const int64_t n = int64_t(rows.size()), H = s.hidden, d = s.widths[i];
        gather_rows(h, H, rows, h_rows.get());
        sgemm(false, true, n, d, H, h_rows.get(), H, w.projection[i], H, 0.0f, p.get(), d);
    }
};

// ------------------------------------------------------------------ training

// Cluster i's share of the mean loss over all N rows, and its gradients: dprojection,
// dout, and dh added into the cluster's rows. The fused output layer averages over the
// cluster's n rows, so its loss and gradients are rescaled by n / N.
double tail_forward_backward(const AdaptiveShape& s, int64_t i, const float* h, const std::vector<int64_t>& rows,
                             const int32_t* targets, const AdaptiveWeights& w, float* dh,
                             const AdaptiveGradients& g) {
    const int64_t n = int64_t(rows.size()), H = s.hidden, d = s.widths[i], m = s.sizes[i];
    if (n == 0) {
        std::fill(g.projection[i], g.projection[i] + d * H, 0.0f);
        std::fill(g.out[i], g.out[i] + m * d, 0.0f);
        return 0.0;
    }
    const TailInput in(s, i, h, rows, w);
    const int64_t start = s.cluster_start(i);
    std::vector<int32_t> local(n);
    for (int64_t r = 0; r < n; ++r) local[r] = int32_t(targets[rows[r]] - start);
    const std::vector<float> zero_bias(m, 0.0f);
    std::vector<float> unused_dbias(m);
    const ScratchFloats dp = scratch_floats(n * d);
    const double loss = output_loss_forward_backward({n, d, m}, in.p.get(), w.out[i], zero_bias.data(), local.data(),
                                                     dp.get(), g.out[i], unused_dbias.data());
    const float share = float(double(n) / double(s.rows));
    for (int64_t k = 0; k < n * d; ++k) dp[k] *= share;
#pragma omp parallel for if (m * d >= kParallelMinWork) schedule(static)
    for (int64_t k = 0; k < m * d; ++k) g.out[i][k] *= share;
    sgemm(true, false, d, H, n, dp.get(), d, in.h_rows.get(), H, 0.0f, g.projection[i], H);
    const ScratchFloats dh_rows = scratch_floats(n * H);
    sgemm(false, false, n, H, d, dp.get(), d, w.projection[i], H, 0.0f, dh_rows.get(), H);
#pragma omp parallel for if (n * H >= kParallelMinWork) schedule(static)
    for (int64_t r = 0; r < n; ++r) {  // rows are distinct: one writer each
        float* dst = dh + rows[r] * H;
        const float* src = dh_rows.get() + r * H;
        for (int64_t k = 0; k < H; ++k) dst[k] += src[k];
    }
    return loss * double(n) / double(s.rows);
}

// ------------------------------------------------------------------ evaluation

// Adds cluster i's tail log-probability of each routed row's target to log_prob.
void tail_log_prob(const AdaptiveShape& s, int64_t i, const float* h, const std::vector<int64_t>& rows,
                   const int32_t* targets, const AdaptiveWeights& w, float* log_prob) {
    const int64_t n = int64_t(rows.size()), d = s.widths[i], m = s.sizes[i];
    if (n == 0) return;
    const TailInput in(s, i, h, rows, w);
    const int64_t start = s.cluster_start(i);
    std::vector<int32_t> local(n), unused_predictions(n);
    for (int64_t r = 0; r < n; ++r) local[r] = int32_t(targets[rows[r]] - start);
    const std::vector<float> zero_bias(m, 0.0f);
    std::vector<float> lse(n);
    output_loss_forward({n, d, m}, in.p.get(), w.out[i], zero_bias.data(), local.data(), lse.data(),
                        unused_predictions.data());
    for (int64_t r = 0; r < n; ++r)
        log_prob[rows[r]] += dot(in.p.get() + r * d, w.out[i] + int64_t(local[r]) * d, d) - lse[r];
}

// For rows whose head arg-max is a cluster column: the arg-max of the full distribution.
// A word of cluster i has log p <= the head's log p of column i, so a cluster is searched
// only for the rows where that column beats the best word found so far.
void predict_beyond_shortlist(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                              const std::vector<float>& bias, const std::vector<int64_t>& rows, int32_t* predictions) {
    const int64_t H = s.hidden, Vh = s.head_size(), c1 = s.shortlist;
    for (size_t r0 = 0; r0 < rows.size(); r0 += kRowChunk) {
        const std::vector<int64_t> chunk(rows.begin() + r0, rows.begin() + std::min(rows.size(), r0 + kRowChunk));
        const int64_t k = int64_t(chunk.size());
        const ScratchFloats h_rows = scratch_floats(k * H), z = scratch_floats(k * Vh);
        gather_rows(h, H, chunk, h_rows.get());
        sgemm(false, true, k, Vh, H, h_rows.get(), H, w.head, H, 0.0f, z.get(), Vh);
        std::vector<float> best_lp(k);
        std::vector<int32_t> best(k);
#pragma omp parallel for if (k * Vh >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < k; ++r) {
            float* zr = z.get() + r * Vh;
            for (int64_t j = 0; j < Vh; ++j) zr[j] += bias[j];
            log_softmax_row(zr, Vh, 0.0f);
            int64_t arg = 0;
            for (int64_t j = 1; j < c1; ++j) arg = zr[j] > zr[arg] ? j : arg;
            best[r] = int32_t(arg);
            best_lp[r] = zr[arg];
        }
        for (int64_t i = 0; i < s.clusters(); ++i) {
            std::vector<int64_t> candidates, at;  // rows of h, and their place in the chunk
            for (int64_t r = 0; r < k; ++r)
                if (z[r * Vh + c1 + i] > best_lp[r]) {
                    candidates.push_back(chunk[r]);
                    at.push_back(r);
                }
            if (candidates.empty()) continue;
            const int64_t n = int64_t(candidates.size()), d = s.widths[i], m = s.sizes[i];
            const TailInput in(s, i, h, candidates, w);
            const std::vector<float> zero_bias(m, 0.0f);
            std::vector<int32_t> any_targets(n, 0), arg(n);
            std::vector<float> lse(n);
            output_loss_forward({n, d, m}, in.p.get(), w.out[i], zero_bias.data(), any_targets.data(), lse.data(),
                                arg.data());
            for (int64_t c = 0; c < n; ++c) {
                const int64_t r = at[c];
                const float tail_max = dot(in.p.get() + c * d, w.out[i] + int64_t(arg[c]) * d, d) - lse[c];
                const float lp = z[r * Vh + c1 + i] + tail_max;
                if (lp > best_lp[r]) {
                    best_lp[r] = lp;
                    best[r] = int32_t(s.cluster_start(i) + arg[c]);
                }
            }
        }
        for (int64_t r = 0; r < k; ++r) predictions[chunk[r]] = best[r];
    }
}

}  // namespace

double adaptive_loss_forward(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                             const int32_t* targets, float* log_prob, int32_t* predictions) {
    const int64_t N = s.rows, H = s.hidden, Vh = s.head_size();
    const Routing routing = route(s, targets);
    const std::vector<float> bias = head_bias_or_zeros(s, w);
    std::vector<float> lse(N);
    output_loss_forward({N, H, Vh}, h, w.head, bias.data(), routing.head_targets.data(), lse.data(), predictions);
#pragma omp parallel for if (N * H >= kParallelMinWork) schedule(static)
    for (int64_t r = 0; r < N; ++r) {
        const int32_t t = routing.head_targets[r];
        log_prob[r] = dot(h + r * H, w.head + int64_t(t) * H, H) + bias[t] - lse[r];
    }
    for (int64_t i = 0; i < s.clusters(); ++i)
        tail_log_prob(s, i, h, routing.cluster_rows[i], targets, w, log_prob);
    std::vector<int64_t> beyond;
    for (int64_t r = 0; r < N; ++r)
        if (predictions[r] >= s.shortlist) beyond.push_back(r);
    predict_beyond_shortlist(s, h, w, bias, beyond, predictions);
    double total = 0.0;
    for (int64_t r = 0; r < N; ++r) total -= double(log_prob[r]);
    return total / double(N);
}

double adaptive_loss_forward_backward(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                                      const int32_t* targets, float* dh, const AdaptiveGradients& g) {
    const int64_t N = s.rows, H = s.hidden, Vh = s.head_size();
    const Routing routing = route(s, targets);
    const std::vector<float> bias = head_bias_or_zeros(s, w);
    std::vector<float> unused_dbias(g.head_bias ? 0 : Vh);
    double loss = output_loss_forward_backward({N, H, Vh}, h, w.head, bias.data(), routing.head_targets.data(), dh,
                                               g.head, g.head_bias ? g.head_bias : unused_dbias.data());
    for (int64_t i = 0; i < s.clusters(); ++i)
        loss += tail_forward_backward(s, i, h, routing.cluster_rows[i], targets, w, dh, g);
    return loss;
}

void adaptive_log_prob(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w, float* out) {
    const int64_t N = s.rows, H = s.hidden, Vh = s.head_size(), V = s.vocab(), c1 = s.shortlist;
    const std::vector<float> bias = head_bias_or_zeros(s, w);
    for (int64_t r0 = 0; r0 < N; r0 += kRowChunk) {
        const int64_t k = std::min(kRowChunk, N - r0);
        const float* hk = h + r0 * H;
        float* ok = out + r0 * V;
        const ScratchFloats z = scratch_floats(k * Vh);
        sgemm(false, true, k, Vh, H, hk, H, w.head, H, 0.0f, z.get(), Vh);
#pragma omp parallel for if (k * Vh >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < k; ++r) {
            float* zr = z.get() + r * Vh;
            for (int64_t j = 0; j < Vh; ++j) zr[j] += bias[j];
            log_softmax_row(zr, Vh, 0.0f);
            std::copy(zr, zr + c1, ok + r * V);
        }
        for (int64_t i = 0; i < s.clusters(); ++i) {
            const int64_t d = s.widths[i], m = s.sizes[i], start = s.cluster_start(i);
            const ScratchFloats p = scratch_floats(k * d);
            sgemm(false, true, k, d, H, hk, H, w.projection[i], H, 0.0f, p.get(), d);
            sgemm(false, true, k, m, d, p.get(), d, w.out[i], d, 0.0f, ok + start, V);
#pragma omp parallel for if (k * m >= kParallelMinWork) schedule(static)
            for (int64_t r = 0; r < k; ++r) log_softmax_row(ok + r * V + start, m, z[r * Vh + c1 + i]);
        }
    }
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
