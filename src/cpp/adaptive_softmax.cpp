#include "adaptive_softmax.h"

#include <algorithm>
#include <cmath>

#include "activations.h"
#include "allocator.h"
#include "gemm.h"
#include "output_loss.h"
#include "parallel.h"
#include "sampling.h"

namespace fastlm {
namespace FASTLM_ISA {

void log_softmax_row(float* x, int64_t n, float shift) {
    // The output layer's vector row passes, not a scalar running max and one chain of
    // double additions: the head of every scored row and every tail of every row of the
    // full distribution go through here.
    const float peak = row_max(x, n);
    const double sum = row_sum_exp(x, n, peak);
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

// Tails at most this wide take the thin output layer (output_loss_thin_forward_backward):
// at W's widths 16 and 64 it measured faster, paired, than storing the logits.
constexpr int64_t kThinTailWidth = 64;

// Cluster i's share of the mean loss over all N rows, and its gradients: dprojection,
// dout, and dh added into the cluster's rows. A thin tail's output layer scales its
// gradients by 1 / N itself; the wide one averages over the cluster's n rows, so its loss
// and gradients are rescaled by n / N.
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
    const ScratchFloats dp = scratch_floats(n * d);
    double loss;
    if (d <= kThinTailWidth) {
        // The thin layer's logits are recomputed rather than stored (output_loss.h), and
        // the gradients come scaled by 1 / N directly.
        loss = output_loss_thin_forward_backward({n, d, m}, in.p.get(), w.out[i], local.data(),
                                                 1.0f / float(s.rows), dp.get(), g.out[i]) /
               double(s.rows);
    } else {
        // Tails have no bias: none passed, none formed (as the head without one).
        loss = output_loss_forward_backward({n, d, m}, in.p.get(), w.out[i], nullptr, local.data(), dp.get(),
                                            g.out[i], nullptr) *
               double(n) / double(s.rows);
        const float share = float(double(n) / double(s.rows));
        for (int64_t k = 0; k < n * d; ++k) dp[k] *= share;
#pragma omp parallel for if (m * d >= kParallelMinWork) schedule(static)
        for (int64_t k = 0; k < m * d; ++k) g.out[i][k] *= share;
    }
    sgemm(true, false, d, H, n, dp.get(), d, in.h_rows.get(), H, 0.0f, g.projection[i], H);
    const ScratchFloats dh_rows = scratch_floats(n * H);
    sgemm(false, false, n, H, d, dp.get(), d, w.projection[i], H, 0.0f, dh_rows.get(), H);
#pragma omp parallel for if (n * H >= kParallelMinWork) schedule(static)
    for (int64_t r = 0; r < n; ++r) {  // rows are distinct: one writer each
        float* dst = dh + rows[r] * H;
        const float* src = dh_rows.get() + r * H;
        for (int64_t k = 0; k < H; ++k) dst[k] += src[k];
    }
    return loss;
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

// For the rows of a chunk whose head arg-max is a cluster column: the arg-max of the full
// distribution, from the chunk's head logits z (k x Vh, bias added; row r is row r0 + r)
// and their log-sum-exps head_lse (k): the head's log p of column j is z[j] - head_lse.
// A word of cluster i has log p <= the head's log p of column i, so a cluster is searched
// only for the rows where that column beats the best word found so far.
void predict_beyond_shortlist(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w, const float* z,
                              const float* head_lse, int64_t r0, int64_t k, int32_t* predictions) {
    const int64_t Vh = s.head_size(), c1 = s.shortlist;
    std::vector<int64_t> chunk;  // places in the chunk of the rows to search
    for (int64_t r = 0; r < k; ++r)
        if (predictions[r0 + r] >= c1) chunk.push_back(r);
    const int64_t n_rows = int64_t(chunk.size());
    if (n_rows == 0) return;
    std::vector<float> best_lp(n_rows);
    std::vector<int32_t> best(n_rows);
    for (int64_t c = 0; c < n_rows; ++c) {
        const float* zr = z + chunk[c] * Vh;
        int64_t arg = 0;
        for (int64_t j = 1; j < c1; ++j) arg = zr[j] > zr[arg] ? j : arg;
        best[c] = int32_t(arg);
        best_lp[c] = zr[arg] - head_lse[chunk[c]];
    }
    for (int64_t i = 0; i < s.clusters(); ++i) {
        std::vector<int64_t> candidates, at;  // rows of h, and their place in chunk
        for (int64_t c = 0; c < n_rows; ++c)
            if (z[chunk[c] * Vh + c1 + i] - head_lse[chunk[c]] > best_lp[c]) {
                candidates.push_back(r0 + chunk[c]);
                at.push_back(c);
            }
        if (candidates.empty()) continue;
        const int64_t n = int64_t(candidates.size()), d = s.widths[i], m = s.sizes[i];
        const TailInput in(s, i, h, candidates, w);
        const std::vector<float> zero_bias(m, 0.0f);
        std::vector<int32_t> any_targets(n, 0), arg(n);
        std::vector<float> lse(n);
        output_loss_forward({n, d, m}, in.p.get(), w.out[i], zero_bias.data(), any_targets.data(), lse.data(),
                            arg.data());
        for (int64_t q = 0; q < n; ++q) {
            const int64_t c = at[q];
            const float tail_max = dot(in.p.get() + q * d, w.out[i] + int64_t(arg[q]) * d, d) - lse[q];
            const float lp = (z[chunk[c] * Vh + c1 + i] - head_lse[chunk[c]]) + tail_max;
            if (lp > best_lp[c]) {
                best_lp[c] = lp;
                best[c] = int32_t(s.cluster_start(i) + arg[q]);
            }
        }
    }
    for (int64_t c = 0; c < n_rows; ++c) predictions[r0 + chunk[c]] = best[c];
}

}  // namespace

double adaptive_loss_forward(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                             const int32_t* targets, float* log_prob, int32_t* predictions) {
    const int64_t N = s.rows, H = s.hidden, Vh = s.head_size();
    const Routing routing = route(s, targets);
    const std::vector<float> bias = head_bias_or_zeros(s, w);
    // The head once per row, in chunks: its log-probabilities serve the targets, the head's
    // arg-max and the search beyond the shortlist alike. The head is packed once.
    // Each row's pass is the output layer's (row_log_sum_exp: bias, maximum and its first
    // index, exp sum, in vector code); the head's log-probabilities are z - lse, formed
    // only where they are read.
    const PackedB head_t(w.head, H, /*trans_b=*/true, H, Vh);
    const ScratchFloats z = scratch_floats(std::min(N, kRowChunk) * Vh);
    std::vector<float> lse(std::min(N, kRowChunk));
    for (int64_t r0 = 0; r0 < N; r0 += kRowChunk) {
        const int64_t k = std::min(kRowChunk, N - r0);
        sgemm_packed(false, k, h + r0 * H, H, head_t, 0.0f, z.get(), Vh);
#pragma omp parallel for if (k * Vh >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < k; ++r) {
            float* zr = z.get() + r * Vh;
            // torch's predict: the head's arg-max first (the first maximum, or the first NaN).
            lse[r] = row_log_sum_exp(zr, bias.data(), Vh, &predictions[r0 + r]);
            log_prob[r0 + r] = zr[routing.head_targets[r0 + r]] - lse[r];
        }
        predict_beyond_shortlist(s, h, w, z.get(), lse.data(), r0, k, predictions);
    }
    for (int64_t i = 0; i < s.clusters(); ++i)
        tail_log_prob(s, i, h, routing.cluster_rows[i], targets, w, log_prob);
    double total = 0.0;
    for (int64_t r = 0; r < N; ++r) total -= double(log_prob[r]);
    return total / double(N);
}

double adaptive_loss_forward_backward(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                                      const int32_t* targets, float* dh, const AdaptiveGradients& g) {
    const int64_t N = s.rows, H = s.hidden, Vh = s.head_size();
    const Routing routing = route(s, targets);
    // A head without a bias goes without one (no zeros added, no column sums formed).
    double loss = output_loss_forward_backward({N, H, Vh}, h, w.head, w.head_bias, routing.head_targets.data(), dh,
                                               g.head, w.head_bias ? g.head_bias : nullptr);
    for (int64_t i = 0; i < s.clusters(); ++i)
        loss += tail_forward_backward(s, i, h, routing.cluster_rows[i], targets, w, dh, g);
    return loss;
}

PackedAdaptive::PackedAdaptive(const AdaptiveShape& s, const AdaptiveWeights& w)
    : head_t(w.head, s.hidden, /*trans_b=*/true, s.hidden, s.head_size()) {
    for (int64_t i = 0; i < s.clusters(); ++i) {
        projection_t.emplace_back(w.projection[i], s.hidden, /*trans_b=*/true, s.hidden, s.widths[i]);
        out_t.emplace_back(w.out[i], s.widths[i], /*trans_b=*/true, s.widths[i], s.sizes[i]);
    }
}

int64_t adaptive_weight_count(const AdaptiveShape& s) {
    int64_t count = s.head_size() * s.hidden;
    for (int64_t i = 0; i < s.clusters(); ++i) count += s.widths[i] * (s.hidden + s.sizes[i]);
    return count;
}

void adaptive_log_prob(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w, float* out) {
    adaptive_log_prob_packed(s, h, w, PackedAdaptive(s, w), out);  // every weight packed once for all row chunks
}

void adaptive_log_prob_packed(const AdaptiveShape& s, const float* h, const AdaptiveWeights& w,
                              const PackedAdaptive& packed, float* out) {
    const int64_t N = s.rows, H = s.hidden, Vh = s.head_size(), V = s.vocab(), c1 = s.shortlist;
    const std::vector<float> bias = head_bias_or_zeros(s, w);
    const PackedB& head_t = packed.head_t;
    const std::vector<PackedB>& projection_t = packed.projection_t;
    const std::vector<PackedB>& out_t = packed.out_t;
    const int64_t chunk = std::min(N, kRowChunk);
    const ScratchFloats z = scratch_floats(chunk * Vh);
    for (int64_t r0 = 0; r0 < N; r0 += kRowChunk) {
        const int64_t k = std::min(kRowChunk, N - r0);
        const float* hk = h + r0 * H;
        float* ok = out + r0 * V;
        // Row-invariant products: a row's distribution does not depend on the rows beside
        // it (scoring passes blocks of whatever rows its sequences leave).
        sgemm_packed_row_invariant(false, k, hk, H, head_t, 0.0f, z.get(), Vh);
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
            sgemm_packed_row_invariant(false, k, hk, H, projection_t[i], 0.0f, p.get(), d);
            sgemm_packed_row_invariant(false, k, p.get(), d, out_t[i], 0.0f, ok + start, V);
#pragma omp parallel for if (k * m >= kParallelMinWork) schedule(static)
            for (int64_t r = 0; r < k; ++r) log_softmax_row(ok + r * V + start, m, z[r * Vh + c1 + i]);
        }
    }
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
