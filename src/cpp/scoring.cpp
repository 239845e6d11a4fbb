#include "scoring.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <numeric>
#include <vector>

#include "adaptive_softmax.h"
#include "allocator.h"
#include "embedding.h"
#include "errors.h"
#include "gemm.h"
#include "lstm.h"
#include "output_loss.h"
#include "interrupt.h"
#include "parallel.h"
#include "sampling.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace {

// Packed rows per chunk of steps: the gate pre-activations of a chunk (rows x 4H floats)
// stay around 32 MB whatever the sequences' lengths, and a chunk of kChunkRows rows (or
// one step, when more sequences than that run at once) is short enough that the stop
// request polled between its stages is seen within milliseconds. A batch of one stream
// runs kChunkRows steps per chunk: the input projection and the decoder of those steps
// are still one large product each, only the recurrence goes step by step.
constexpr int64_t kChunkGateFloats = int64_t(1) << 23;
constexpr int64_t kChunkRows = 1024;

// A step of the recurrence with fewer multiply-adds than this runs on one thread: sharing
// it would cost two barriers per step, which exceed its work at a batch of a few rows (and
// on a shared machine, where a barrier waits for a descheduled thread, by far). The other
// threads meanwhile score the previous chunk's rows (the decoder), so no core idles.
constexpr int64_t kRecurrenceMinWork = int64_t(1) << 22;

// An adaptive decoder of a chunk goes in blocks of this many rows, taken by threads as
// they come (a full softmax in vocabulary blocks: RowScorer). Fixed blocks: which thread
// scores a block changes no bit of the results.
constexpr int64_t kDecoderBlockRows = 64;

// output_scores' rows per RowScorer: its statistics (16 bytes per row and item) stay
// near 8 MiB whatever the number of rows.
constexpr int64_t kScorerStatistics = int64_t(1) << 19;

// The LSTM weights packed once per call, shared by every group of sequences (a full
// softmax's decoder is read as it is: RowScorer packs a block of it at a time), and an
// adaptive softmax's decoder, packed once as well.
struct PackedModel {
    std::vector<PackedLstmLayer> layers;
    std::unique_ptr<PackedAdaptive> adaptive;

    explicit PackedModel(const LanguageModelView& m) {
        if (m.adaptive_shape.clusters() > 0) adaptive = std::make_unique<PackedAdaptive>(m.adaptive_shape, m.adaptive);
        for (const LstmLayerView& l : m.layers) layers.emplace_back(l, m.hidden);
    }
};

// One group of sequences, longest first: where each scored position's input and target
// come from and where its results go.
struct Group {
    const int32_t* ids;
    const int64_t* offsets;
    const int64_t* out_at;
    int32_t bos;
    std::vector<int64_t> members;  // sequence indices, longest first
    std::vector<int64_t> active;   // active[t]: members still running at step t (a prefix)

    int32_t input(int64_t r, int64_t t) const {
        const int64_t at = offsets[members[r]];
        return bos >= 0 ? (t == 0 ? bos : ids[at + t - 1]) : ids[at + t];
    }
    int32_t target(int64_t r, int64_t t) const { return ids[offsets[members[r]] + t + (bos >= 0 ? 0 : 1)]; }
    int64_t output(int64_t r, int64_t t) const { return out_at[members[r]] + t; }
    int64_t size() const { return int64_t(members.size()); }
};

// Streams of equal length continued from a given state: row r's step t reads x and y at
// r * steps + t and writes its scores there.
struct Streams {
    const int32_t* x;
    const int32_t* y;
    int64_t batch;
    std::vector<int64_t> active;  // every stream runs at every step

    int32_t input(int64_t r, int64_t t) const { return x[r * steps() + t]; }
    int32_t target(int64_t r, int64_t t) const { return y[r * steps() + t]; }
    int64_t output(int64_t r, int64_t t) const { return r * steps() + t; }
    int64_t size() const { return batch; }
    int64_t steps() const { return int64_t(active.size()); }
};

// An adaptive softmax decoder on rows (n x H) of hidden states: each row's full
// distribution, in row chunks, the weights packed once for the whole call (packed). Each
// chunk streams every packed weight from memory (31 MB at V = 250,000, H = 512), so chunks
// hold as many logits as the decoder has weights (chunks of 2^20 logits were 4 rows there:
// bound by that stream, not by their arithmetic); equal chunks, so that the last one is
// not a sliver.
void score_rows_adaptive(const LanguageModelView& m, const PackedAdaptive& packed, const float* hidden, int64_t n,
                         const int32_t* targets, const ScoreOutputs& out, InterruptPoll& poll) {
    if (n <= 0) return;
    const int64_t H = m.hidden, V = m.vocab;
    const int64_t elements = std::max(kLogitChunkElements, adaptive_weight_count(m.adaptive_shape));
    const int64_t most = std::max<int64_t>(1, elements / V);
    const int64_t chunk = std::max<int64_t>(1, ceil_div(n, ceil_div(n, most)));
    const ScratchFloats log_p = scratch_floats(std::min(n, chunk) * V);
    AdaptiveShape shape = m.adaptive_shape;
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
        shape.rows = std::min(chunk, n - r0);
        adaptive_log_prob_packed(shape, hidden + r0 * H, m.adaptive, packed, log_p.get());
#pragma omp parallel for if (shape.rows * V >= kParallelMinWork) schedule(dynamic)
        for (int64_t r = 0; r < shape.rows; ++r) {
            const float* z = log_p.get() + r * V;
            const int64_t row = r0 + r;
            const float target = z[targets[row]];
            out.log_probs[row] = target;
            int32_t above = 0, nans = 0;
            for (int64_t v = 0; v < V; ++v) {
                above += z[v] > target;
                nans += z[v] != z[v];
            }
            out.ranks[row] = above;
            // The arg-max as argmax gives it (the first NaN, else the first maximum), but
            // without its scalar compare chain over all V (250,000 at config X, more than
            // the row's share of the products): the vector max, then a scan to its first
            // place, which is near the front where frequent words score highest.
            int64_t best = 0;
            if (nans > 0) {
                best = argmax(z, V);
            } else {
                const float peak = row_max(z, V);
                while (z[best] != peak) ++best;
            }
            out.predictions[row] = static_cast<int32_t>(best);
        }
        poll();
    }
}

// Scratch of one group, reused across its chunks of steps.
struct GroupBuffers {
    std::vector<std::vector<float>> h, c;  // per layer, the state of every member (members x H)
    std::vector<float> x, layer_out, pre;
    std::vector<int32_t> tokens, targets;
};

// The decoder's work on one chunk's top-layer rows, in pieces that threads take as they
// come (next): a full softmax's vocabulary blocks over all the rows (scorer), so the
// decoder weight is read once per chunk, or an adaptive decoder's fixed blocks of rows.
struct DecoderJob {
    std::vector<float> hidden;  // rows x H
    std::vector<int32_t> targets, prediction, rank;
    std::vector<float> log_prob;
    std::vector<int64_t> step_at;  // the chunk's packing: step t's rows start at step_at[t - t0]
    int64_t rows = 0, t0 = 0, t1 = 0;
    std::unique_ptr<RowScorer> scorer;
    std::atomic<int64_t> next{0};
    bool pending = false;

    int64_t blocks() const { return scorer ? scorer->items() : ceil_div(rows, kDecoderBlockRows); }
};

// Pieces of the job until none is left; called by every thread that has time for it.
void run_decoder_blocks(const LanguageModelView& m, const PackedModel& packed, DecoderJob& job) {
    const int64_t H = m.hidden;
    InterruptPoll never({});  // inside a parallel region: the caller polls between regions
    for (int64_t i = job.next.fetch_add(1); i < job.blocks(); i = job.next.fetch_add(1)) {
        if (job.scorer) {
            job.scorer->run(i);
            continue;
        }
        const int64_t r0 = i * kDecoderBlockRows, n = std::min(kDecoderBlockRows, job.rows - r0);
        const ScoreOutputs block{job.log_prob.data() + r0, job.prediction.data() + r0, job.rank.data() + r0};
        score_rows_adaptive(m, *packed.adaptive, job.hidden.data() + r0 * H, n, job.targets.data() + r0, block,
                            never);
    }
}

// Steps [t0, t1) of one layer's recurrence, on the calling thread alone. Its products
// are row-invariant, as the shared recurrence's: a step has as many rows as sequences are
// still running, and a sequence's scores must not depend on which others share its group
// (nor on whether the step was shared).
template <class Rows>
void recurrence_one_thread(int64_t H, const Rows& g, int64_t t0, int64_t t1, const std::vector<int64_t>& step_at,
                           const PackedLstmLayer& layer, float* pre, float* h_state, float* c_state, float* hs) {
    const int64_t G = 4 * H;
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = g.active[t], at = step_at[t - t0];
        const float* h_prev = t == t0 ? h_state : hs + step_at[t - t0 - 1] * H;
        sgemm_packed_one_thread(false, n, h_prev, H, layer.w_hh_t, 1.0f, pre + at * G, G, /*row_invariant=*/true);
        for (int64_t r = 0; r < n; ++r)
            lstm_cell_forward(H, layer.bias.data(), pre + (at + r) * G, c_state + r * H, c_state + r * H,
                              hs + (at + r) * H);
    }
}

// Scores a group (Group or Streams) from the state in b.h / b.c, which it leaves holding
// the state after each member's last step. poll runs between the stages of every chunk.
//
// A chunk's decoder runs while the next chunk's recurrence does, when that recurrence
// is on one thread (few rows per step): the exact reading of a text (one stream) then
// keeps every core busy without a barrier per step. The results are the same whichever
// thread computes what, and whether the recurrence is shared or not.
template <class Rows>
void score_group(const LanguageModelView& m, const PackedModel& packed, const Rows& g, GroupBuffers& b,
                 const ScoreOutputs& out, InterruptPoll& poll) {
    const int64_t H = m.hidden, G = 4 * H, E = m.embed;
    const int64_t steps = int64_t(g.active.size());
    const int64_t budget = std::max<int64_t>(1, std::min(kChunkRows, kChunkGateFloats / G));
    DecoderJob job;
    // The job's remaining blocks on every thread, then its results to their places.
    auto finish = [&]() {
#pragma omp parallel if (job.rows * m.vocab * H >= kParallelMinWork)
        run_decoder_blocks(m, packed, job);
        if (job.scorer) {
            job.scorer->finish({job.log_prob.data(), job.prediction.data(), job.rank.data()});
            job.scorer.reset();
        }
        for (int64_t t = job.t0; t < job.t1; ++t)
            for (int64_t r = 0; r < g.active[t]; ++r) {
                const int64_t from = job.step_at[t - job.t0] + r, to = g.output(r, t);
                out.log_probs[to] = job.log_prob[from];
                out.predictions[to] = job.prediction[from];
                out.ranks[to] = job.rank[from];
            }
        job.pending = false;
        poll();
    };
    std::vector<int64_t> step_at;
    for (int64_t t0 = 0; t0 < steps;) {
        // Steps [t0, t1): packed rows, step t's rows at step_at[t - t0].
        int64_t rows = 0, t1 = t0;
        step_at.clear();
        while (t1 < steps && (t1 == t0 || rows + g.active[t1] <= budget)) {
            step_at.push_back(rows);
            rows += g.active[t1++];
        }
        b.tokens.resize(rows);
        b.targets.resize(rows);
        for (int64_t t = t0; t < t1; ++t)
            for (int64_t r = 0; r < g.active[t]; ++r) {
                b.tokens[step_at[t - t0] + r] = g.input(r, t);
                b.targets[step_at[t - t0] + r] = g.target(r, t);
            }
        b.x.resize(rows * std::max(E, H));
        b.layer_out.resize(rows * H);
        b.pre.resize(rows * G);
        embedding_forward(m.embedding, E, b.tokens.data(), rows, b.x.data());
        const bool one_thread = g.active[t0] * G * H < kRecurrenceMinWork;
        for (size_t k = 0; k < m.layers.size(); ++k) {
            const int64_t width = m.layers[k].input;
            const PackedLstmLayer& layer = packed.layers[k];
            // Row-invariant: a row's gates do not depend on the chunk's size, so a text
            // scored in calls of any size (fastlm.scoring.TEXT_CALL_ROWS) gets the same scores.
            sgemm_packed_row_invariant(false, rows, b.x.data(), width, layer.w_ih_t, 0.0f, b.pre.data(), G);
            float* h_state = b.h[k].data();
            float* c_state = b.c[k].data();
            float* hs = b.layer_out.data();
            float* pre = b.pre.data();
            if (one_thread && job.pending) {
                // Thread 0 runs the recurrence, the others the previous chunk's decoder,
                // which thread 0 joins when it is done.
#pragma omp parallel
                {
                    if (thread_id() == 0)
                        recurrence_one_thread(H, g, t0, t1, step_at, layer, pre, h_state, c_state, hs);
                    run_decoder_blocks(m, packed, job);
                }
            } else if (one_thread) {
                recurrence_one_thread(H, g, t0, t1, step_at, layer, pre, h_state, c_state, hs);
            } else {
                // One parallel region for the chunk's recurrence, as in lstm_forward: per
                // step each thread's share of the recurrent product, then its rows' cells.
#pragma omp parallel
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t n = g.active[t], at = step_at[t - t0];
                    // h_{t-1}: the carried state at a chunk's first step, else the previous
                    // step's rows, of which the rows still running are a prefix.
                    const float* h_prev = t == t0 ? h_state : hs + step_at[t - t0 - 1] * H;
                    sgemm_packed_team_share(false, n, h_prev, H, layer.w_hh_t, 1.0f, pre + at * G, G,
                                            /*row_invariant=*/true);
#pragma omp barrier
#pragma omp for schedule(static)
                    for (int64_t r = 0; r < n; ++r)
                        lstm_cell_forward(H, layer.bias.data(), pre + (at + r) * G, c_state + r * H,
                                          c_state + r * H, hs + (at + r) * H);
                }
            }
            // Carry h of the members still running into the next chunk.
            const int64_t last = step_at[t1 - 1 - t0];
            std::copy(hs + last * H, hs + (last + g.active[t1 - 1]) * H, h_state);
            std::swap(b.x, b.layer_out);
            b.layer_out.resize(rows * H);
            poll();
        }
        if (job.pending) finish();  // what the recurrence left of the previous chunk's decoder
        // This chunk's decoder: overlapped with the next chunk's recurrence, or now.
        job.hidden.swap(b.x);
        job.targets.swap(b.targets);
        job.rows = rows;
        job.t0 = t0;
        job.t1 = t1;
        job.step_at = step_at;
        job.log_prob.resize(rows);
        job.prediction.resize(rows);
        job.rank.resize(rows);
        if (m.adaptive_shape.clusters() == 0)
            job.scorer = std::make_unique<RowScorer>(OutputShape{rows, H, m.vocab}, job.hidden.data(), m.decoder_w,
                                                     m.decoder_b, job.targets.data());
        job.next = 0;
        job.pending = true;
        t0 = t1;
        if (t0 < steps && g.active[t0] * G * H >= kRecurrenceMinWork) finish();
    }
    if (job.pending) finish();
}

}  // namespace

void output_scores(const OutputShape& s, const float* h, const float* weight, const float* bias,
                   const int32_t* targets, const ScoreOutputs& out) {
    const int64_t H = s.hidden, V = s.vocab;
    const int64_t items = RowScorer::items_for(V);
    const int64_t chunk = std::max<int64_t>(32, kScorerStatistics / std::max<int64_t>(1, items));
    for (int64_t r0 = 0; r0 < s.rows; r0 += chunk) {
        const int64_t rows = std::min(chunk, s.rows - r0);
        RowScorer scorer({rows, H, V}, h + r0 * H, weight, bias, targets + r0);
#pragma omp parallel for if (rows * V * H >= kParallelMinWork) schedule(dynamic)
        for (int64_t item = 0; item < items; ++item) scorer.run(item);
        scorer.finish({out.log_probs + r0, out.predictions + r0, out.ranks + r0});
    }
}

void score_sequences(const LanguageModelView& model, const int32_t* ids, const int64_t* offsets, int64_t count,
                     int32_t bos, int64_t batch_size, const ScoreOutputs& out,
                     const std::function<bool()>& stop_requested) {
    std::vector<int64_t> steps(count), out_at(count + 1, 0);
    for (int64_t i = 0; i < count; ++i) {
        steps[i] = scored_count(offsets[i + 1] - offsets[i], bos);
        out_at[i + 1] = out_at[i] + steps[i];
    }
    std::vector<int64_t> order;
    for (int64_t i = 0; i < count; ++i)
        if (steps[i] > 0) order.push_back(i);
    // Longest first; equal lengths in input order, so results do not depend on the sort.
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return steps[a] > steps[b]; });
    if (order.empty()) return;
    InterruptPoll poll(stop_requested);
    const PackedModel packed(model);
    GroupBuffers buffers;
    for (size_t g0 = 0; g0 < order.size(); g0 += size_t(batch_size)) {
        Group group{ids, offsets, out_at.data(), bos, {}, {}};
        const size_t g1 = std::min(order.size(), g0 + size_t(batch_size));
        group.members.assign(order.begin() + g0, order.begin() + g1);
        const int64_t longest = steps[group.members.front()];
        group.active.assign(longest, 0);
        int64_t running = int64_t(group.members.size());
        for (int64_t t = 0; t < longest; ++t) {
            while (steps[group.members[running - 1]] <= t) --running;
            group.active[t] = running;
        }
        buffers.h.assign(model.layers.size(), std::vector<float>(group.size() * model.hidden, 0.0f));
        buffers.c.assign(model.layers.size(), std::vector<float>(group.size() * model.hidden, 0.0f));
        score_group(model, packed, group, buffers, out, poll);
    }
}

void score_streams(const LanguageModelView& model, const int32_t* x, const int32_t* y, int64_t batch,
                   int64_t steps, float* h, float* c, const ScoreOutputs& out,
                   const std::function<bool()>& stop_requested) {
    if (batch <= 0 || steps <= 0) return;
    InterruptPoll poll(stop_requested);
    const int64_t H = model.hidden, L = int64_t(model.layers.size());
    const PackedModel packed(model);
    GroupBuffers buffers;
    for (int64_t k = 0; k < L; ++k) {
        buffers.h.emplace_back(h + k * batch * H, h + (k + 1) * batch * H);
        buffers.c.emplace_back(c + k * batch * H, c + (k + 1) * batch * H);
    }
    const Streams streams{x, y, batch, std::vector<int64_t>(steps, batch)};
    score_group(model, packed, streams, buffers, out, poll);
    for (int64_t k = 0; k < L; ++k) {
        std::copy(buffers.h[k].begin(), buffers.h[k].end(), h + k * batch * H);
        std::copy(buffers.c[k].begin(), buffers.c[k].end(), c + k * batch * H);
    }
}

void prediction_counts(const int32_t* targets, const int32_t* predictions, int64_t n, int64_t vocab,
                       int64_t* counts) {
    int64_t* true_positives = counts;
    int64_t* predicted = counts + vocab;
    int64_t* actual = counts + 2 * vocab;
    for (int64_t i = 0; i < n; ++i) {
        true_positives[targets[i]] += predictions[i] == targets[i];
        ++predicted[predictions[i]];
        ++actual[targets[i]];
    }
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
