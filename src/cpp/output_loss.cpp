#include "output_loss.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "activations.h"
#include "allocator.h"
#include "gemm.h"
#include "kernels/kernel_set.h"
#include "parallel.h"
#include "prefetch.h"
#include "sampling.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace {

// Rows per chunk: about kLogitChunkElements logits, or as many as the decoder has weights
// when that is more. Each chunk streams the decoder (packed, and as it lies or packed again
// for dh) and its gradient:
// 3 V H floats, from DRAM once they outgrow L3 (78 MB at C's V = 10000, H = 650), so
// larger chunks amortise that stream over more rows. The chunk never outgrows the
// weights themselves, so memory still does not grow with N.
int64_t chunk_rows(const OutputShape& s) {
    const int64_t vocab = std::max<int64_t>(1, s.vocab);
    const int64_t elements = std::max(kLogitChunkElements, vocab * s.hidden);
    return std::max<int64_t>(1, std::min(s.rows, elements / vocab));
}

// The decoder weight packed for both ways it is multiplied: logits = h W^T, dh = dlogits W.
// The second reads W as it lies where the microkernel can (kBInPlace) when a single chunk
// uses it: packing would copy the whole decoder for one use. From two chunks on, W is
// packed: the packed product's panel prefetch makes dh faster than reading W in place, by
// more than the copy costs on Zen 4 (zaremba-small's two chunks and the seven of the
// adaptive head at W; bench/PROFILES.md has the one machine where two chunks measured the
// other way).
struct PackedDecoder {
    const float* w;
    PackedB weight_t, weight;  // weight empty: dh reads W in place
    PackedDecoder(const float* w, int64_t V, int64_t H, int64_t chunks) : w(w) {
        if (kBInPlace && chunks < 2)
            weight_t = PackedB(w, H, /*trans_b=*/true, H, V);
        else
            std::tie(weight_t, weight) = PackedB::both_ways(w, H, V, H);
    }
};

// z (rows x V) <- h_chunk W^T; the bias is added by each row's first pass, which reads
// the row anyway.
void chunk_logits(const OutputShape& s, const float* h_chunk, int64_t rows, const PackedB& weight_t, float* z) {
    sgemm_packed(false, rows, h_chunk, s.hidden, weight_t, 0.0f, z, s.vocab);
}

// Row reductions in sixteen independent lanes, so that the compiler may vectorise them
// (a single running max or sum fixes the order and stays scalar without -ffast-math).
// GCC 12 still leaves the max scalar: the row family's vector span
// (kernels/<isa>/row_spans.h) runs first and these lanes take the rest of the row.
constexpr int64_t kLanes = 16;

// z <- z + bias, returning the row's maximum.
float add_bias_row_max(float* z, const float* bias, int64_t V) {
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, -INFINITY);
    int64_t v = row_spans::add_bias_max(z, bias, V, lanes);
    for (; v + kLanes <= V; v += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) {
            const float x = (z[v + l] += bias[v + l]);
            lanes[l] = x > lanes[l] ? x : lanes[l];
        }
    float peak = -INFINITY;
    for (; v < V; ++v) {
        const float x = (z[v] += bias[v]);
        peak = x > peak ? x : peak;
    }
    for (int64_t l = 0; l < kLanes; ++l) peak = lanes[l] > peak ? lanes[l] : peak;
    return peak;
}

// Sum of exp(z - peak) over a row (kStore: the exps replace z). Float lanes over blocks
// of 256, each block total added in double: ~1e-8 relative error at any V. next (or
// null): a row of V floats to request into L2 meanwhile, a block's worth per block.
template <bool kStore>
double row_exp_sum(float* z, int64_t V, float peak, const float* next = nullptr) {
    constexpr int64_t kBlock = 256;
    double total = 0.0;
    for (int64_t b = 0; b < V; b += kBlock) {
        const int64_t end = std::min(V, b + kBlock);
        if (next) prefetch_range<2>(next + b, next + end);
        float lanes[kLanes] = {};
        int64_t v = row_spans::exp_sum<kStore>(z, b, end, peak, lanes);
        for (; v + kLanes <= end; v += kLanes)
            for (int64_t l = 0; l < kLanes; ++l) {
                const float e = exp_approx(z[v + l] - peak);
                if (kStore) z[v + l] = e;
                lanes[l] += e;
            }
        for (; v < end; ++v) {
            const float e = exp_approx(z[v] - peak);
            if (kStore) z[v] = e;
            total += e;
        }
        float block = 0.0f;
        for (int64_t l = 0; l < kLanes; ++l) block += lanes[l];
        total += block;
    }
    return total;
}

// Training's row pass: z <- d loss / d logits = (softmax(z + bias) - onehot(target)) / N
// with a single exp per logit (kept, then scaled); returns the row's log-sum-exp. A null
// bias is none (adding zeros would give the same bits). next (or null): the row this
// thread takes next, requested into L2 during the exps, which leave the memory idle: the
// first pass over a row otherwise waits for it to come from L3 (the chunk's logits, 8 MB
// at zaremba-small, outgrow L2).
float row_softmax_gradient_lse(float* z, const float* bias, int64_t V, int32_t target, float inv_rows,
                               const float* next) {
    const float peak = bias ? add_bias_row_max(z, bias, V) : row_max(z, V);
    const double sum = row_exp_sum<true>(z, V, peak, next);
    const float scale = static_cast<float>(double(inv_rows) / sum);
    for (int64_t v = 0; v < V; ++v) z[v] *= scale;
    z[target] -= inv_rows;
    return peak + static_cast<float>(std::log(sum));
}

// Rows a thread takes at a time in training's row pass.
constexpr int64_t kRowRun = 8;

// z <- d loss / d logits = (softmax(z + bias) - onehot(target)) / N, in place.
void row_softmax_gradient(float* z, const float* bias, int64_t V, float lse, int32_t target, float inv_rows) {
    for (int64_t v = 0; v < V; ++v) z[v] = exp_approx(z[v] + bias[v] - lse) * inv_rows;
    z[target] -= inv_rows;
}

// One piece of chunk_gradients' two products: rows [i0, i1) x columns [j0, j1) of dh
// (dh_item) or of dW.
struct GradientItem {
    bool dh_item;
    int64_t i0, i1, j0, j1;
    int64_t cost(int64_t k) const { return (i1 - i0) * (j1 - j0) * k; }
};

// Cuts an m x n product into items: row blocks of at most kGradientBlockRows rows and,
// when they are fewer than the threads and column_groups allows, column groups (each
// packs its rows of op(A) again). Boundaries fall on whole tiles (rows at multiples of MR
// from 0, columns at multiples of NR), so every tile is the one the whole product
// computes, with the same k blocks (no piece has MR rows or fewer unless the product
// has): the same bits.
constexpr int64_t kGradientBlockRows = 16 * MR;
void add_gradient_items(bool dh_item, int64_t m, int64_t n, int64_t threads, bool column_groups,
                        std::vector<GradientItem>& items) {
    const int64_t row_blocks = ceil_div(m, kGradientBlockRows), panels = ceil_div(n, NR);
    const int64_t groups = column_groups ? std::min(panels, ceil_div(threads, row_blocks)) : 1;
    auto row = [&](int64_t b) { return b == row_blocks ? m : b * m / row_blocks / MR * MR; };
    auto column = [&](int64_t g) { return g == groups ? n : g * panels / groups * NR; };
    for (int64_t b = 0; b < row_blocks; ++b)
        for (int64_t g = 0; g < groups; ++g)
            if (row(b) < row(b + 1) && column(g) < column(g + 1))
                items.push_back({dh_item, row(b), row(b + 1), column(g), column(g + 1)});
}

// db (+)= the column sums of dlogits over columns [v0, v1), row after row: each element
// one chain of additions in row order, whoever runs it and however the columns are cut.
// The rows' pieces come from L3, each a page or more from the last (no hardware prefetch
// across them): requested kSumAhead rows ahead, they arrive while the sums run.
constexpr int64_t kSumAhead = 8;
void bias_column_sums(const float* dlogits, int64_t rows, int64_t V, int64_t v0, int64_t v1, bool first,
                      float* dbias) {
    if (first) std::fill(dbias + v0, dbias + v1, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
        if (r + kSumAhead < rows) prefetch_range<3>(dlogits + (r + kSumAhead) * V + v0, dlogits + (r + kSumAhead) * V + v1);
        for (int64_t v = v0; v < v1; ++v) dbias[v] += dlogits[r * V + v];
    }
}

// From one chunk's dlogits: dh rows, and dW, db accumulated (overwritten on the first chunk).
// dh = dlogits W (W packed, or in place where the microkernel can read it so: see
// PackedDecoder) and dW (+)= dlogits^T h share one parallel region, their items largest
// first, taken as they come: one wait for the last item per chunk instead of one per
// product. h is packed for dW: read in place, its rows H floats apart (1 KB at
// H = 256) fall in a few L1 sets. Each dW item (all of dW's columns for a block of its
// rows, i.e. a block of dlogits' columns) first sums those columns of dlogits into db: the
// block (100 KB at 200 rows) comes from L3 once, and the product's pack of it then reads
// it from L2, where a pass of its own over the whole chunk read the 8 MB from L3 again.
void chunk_gradients(const OutputShape& s, const float* h_chunk, int64_t rows, bool first,
                     const PackedDecoder& decoder, const float* dlogits, float* dh_chunk, float* dweight,
                     float* dbias) {
    const int64_t H = s.hidden, V = s.vocab;
    const int64_t threads = rows * V * H >= kParallelMinWork ? max_threads() : 1;
    std::vector<GradientItem> items;
    const bool w_in_place = decoder.weight.n() == 0;  // else packed (PackedDecoder): whole rows
    add_gradient_items(true, rows, H, threads, /*column_groups=*/w_in_place, items);
    add_gradient_items(false, V, H, threads, /*column_groups=*/false, items);
    const PackedB h_packed(h_chunk, H, /*trans_b=*/false, rows, H);
    std::stable_sort(items.begin(), items.end(), [&](const GradientItem& a, const GradientItem& b) {
        return a.cost(a.dh_item ? V : rows) > b.cost(b.dh_item ? V : rows);
    });
    const float beta = first ? 0.0f : 1.0f;
    const int64_t count = int64_t(items.size());
#pragma omp parallel for if (threads > 1 && count > 1) schedule(dynamic)
    for (int64_t it = 0; it < count; ++it) {
        const GradientItem& t = items[it];
        if (t.dh_item && w_in_place)  // dh = dlogits W
            sgemm_b_in_place_one_thread(false, t.i1 - t.i0, t.j1 - t.j0, V, dlogits + t.i0 * V, V,
                                        decoder.w + t.j0, H, 0.0f, dh_chunk + t.i0 * H + t.j0, H);
        else if (t.dh_item)
            sgemm_packed_one_thread(false, t.i1 - t.i0, dlogits + t.i0 * V, V, decoder.weight, 0.0f,
                                    dh_chunk + t.i0 * H, H);
        else {  // dW (+)= dlogits^T h, row blocks of dW (all of its columns: no column groups)
            if (dbias) bias_column_sums(dlogits, rows, V, t.i0, t.i1, first, dbias);
            sgemm_packed_one_thread(true, t.i1 - t.i0, dlogits + t.i0, V, h_packed, beta, dweight + t.i0 * H, H);
        }
    }
}

// ------------------------------------------------------------------ inference
// The forward pass alone never stores logits. It computes logits^T = W h^T, a block of
// kVocabBlock vocabulary entries times kRowBlock rows at a time (in L2), and reduces each
// block at once to per-row statistics: the block's maximum, its first arg-max and the sum
// of exp(logit - maximum). A merge per row then gives the log-sum-exp. The transposed
// product streams W through the cache once per row chunk, not once per 100 rows, packs
// it as it goes (no packed copy of the 8 MB decoder), and makes the reductions run across
// rows, contiguous in memory, with no horizontal sums.

constexpr int64_t kVocabBlock = 96;        // a multiple of every build's tile height (4, 6, 8)
constexpr int64_t kRowBlock = 256;         // a multiple of every build's panel width (8, 16, 32)
constexpr int64_t kForwardStatistics = int64_t(1) << 19;  // block x row entries per chunk

// Per (vocabulary block, row): entry vb * rows + r. above (with ranks only): how many of
// the block's logits exceed the row's threshold, the target's logit.
struct BlockStatistics {
    std::vector<float> max, sum;
    std::vector<int32_t> arg, above;
    BlockStatistics(int64_t n, bool ranks) : max(n), sum(n), arg(n), above(ranks ? n : 0) {}
};

// One block of logits^T: z[v * ldz + r] for v < m entries (from v0) and r < n rows. With
// kRank also each row's count of logits above threshold[r].
template <bool kRank>
void reduce_logit_block(const float* z, int64_t ldz, int64_t m, int64_t n, int64_t v0, const float* bias,
                        const int32_t* targets, const float* threshold, float* max, float* sum, int32_t* arg,
                        int32_t* above, float* target_logit) {
    const int64_t r0 = logit_block::rows<kRank>(z, ldz, m, n, v0, bias, threshold, max, sum, arg, above);
    for (int64_t r = r0; r < n; ++r) {
        max[r] = -INFINITY;
        sum[r] = 0.0f;
        arg[r] = static_cast<int32_t>(v0);
        if (kRank) above[r] = 0;
    }
    // Strictly greater: the first index of the maximum wins, as in NumPy's argmax.
    for (int64_t v = 0; v < m; ++v) {
        const float b = bias[v0 + v];
        const int32_t index = static_cast<int32_t>(v0 + v);
        const float* zv = z + v * ldz;
        for (int64_t r = r0; r < n; ++r) {
            const float x = zv[r] + b;
            const bool greater = x > max[r];
            max[r] = greater ? x : max[r];
            arg[r] = greater ? index : arg[r];
            if (kRank) above[r] += x > threshold[r];
        }
    }
    for (int64_t v = 0; v < m; ++v) {
        const float b = bias[v0 + v];
        const float* zv = z + v * ldz;
        for (int64_t r = r0; r < n; ++r) sum[r] += exp_approx(zv[r] + b - max[r]);
    }
    for (int64_t r = 0; r < n; ++r) {
        const int64_t t = targets[r] - v0;  // each target lies in one block: one writer per row
        if (t >= 0 && t < m) target_logit[r] = z[t * ldz + r] + bias[targets[r]];
    }
}

// Vocabulary block vb's statistics for rows [j_begin, j_end) of the rows packed in h_t.
template <bool kRank>
void block_statistics(const OutputShape& s, int64_t vb, int64_t j_begin, int64_t j_end, int64_t rows,
                      const PackedB& h_t, const float* weight, const float* bias, const int32_t* targets,
                      const float* threshold, BlockStatistics& stats, float* target_logit) {
    const int64_t H = s.hidden, V = s.vocab;
    const int64_t v0 = vb * kVocabBlock, m = std::min(kVocabBlock, V - v0);
    const int64_t at = vb * rows;
    sgemm_packed_row_block(false, m, weight + v0 * H, H, h_t, j_begin, j_end, kRowBlock,
                           [&](int64_t j0, int64_t n, const float* z, int64_t ldz) {
                               reduce_logit_block<kRank>(
                                   z, ldz, m, n, v0, bias, targets + j0, kRank ? threshold + j0 : nullptr,
                                   &stats.max[at + j0], &stats.sum[at + j0], &stats.arg[at + j0],
                                   kRank ? &stats.above[at + j0] : nullptr, target_logit + j0);
                           });
}

// The statistics of every vocabulary block for rows h_rows (rows x H), and each row's
// target logit. Work items are vocabulary blocks (times row ranges when there are few).
// With kRank also the blocks' counts above threshold (rows).
template <bool kRank>
void vocab_block_statistics(const OutputShape& s, const float* h_rows, int64_t rows, const float* weight,
                            const float* bias, const int32_t* targets, const float* threshold,
                            BlockStatistics& stats, float* target_logit) {
    const int64_t H = s.hidden, V = s.vocab, vocab_blocks = ceil_div(V, kVocabBlock);
    const PackedB h_t(h_rows, H, /*trans_b=*/true, H, rows);  // logits^T = W h^T
    const int64_t threads = rows * V * H >= kParallelMinWork ? max_threads() : 1;
    const int64_t row_blocks = ceil_div(rows, kRowBlock);
    const int64_t splits = vocab_blocks >= 4 * threads ? 1 : std::min(row_blocks, ceil_div(4 * threads, vocab_blocks));
#pragma omp parallel for if (threads > 1) schedule(dynamic)  // see GemmItems in gemm.cpp
    for (int64_t item = 0; item < vocab_blocks * splits; ++item) {
        const int64_t vb = item / splits, split = item % splits;
        const int64_t j_begin = split * row_blocks / splits * kRowBlock;
        const int64_t j_end = std::min(rows, (split + 1) * row_blocks / splits * kRowBlock);
        block_statistics<kRank>(s, vb, j_begin, j_end, rows, h_t, weight, bias, targets, threshold, stats,
                                target_logit);
    }
}

// Every row's maximum, arg-max and sum of exp(logit - maximum) from its blocks'
// statistics, merged in block order (so the first block with the maximum wins).
void merge_blocks(const BlockStatistics& stats, int64_t vocab_blocks, int64_t rows, float* peak, double* total,
                  int32_t* best) {
    std::fill(peak, peak + rows, -INFINITY);
    std::fill(total, total + rows, 0.0);
    for (int64_t vb = 0; vb < vocab_blocks; ++vb) {
        const float* max = &stats.max[vb * rows];
        const int32_t* arg = &stats.arg[vb * rows];
        for (int64_t r = 0; r < rows; ++r) {
            const bool greater = max[r] > peak[r];
            peak[r] = greater ? max[r] : peak[r];
            best[r] = greater ? arg[r] : best[r];
        }
    }
    for (int64_t vb = 0; vb < vocab_blocks; ++vb) {
        const float* max = &stats.max[vb * rows];
        const float* sum = &stats.sum[vb * rows];
        for (int64_t r = 0; r < rows; ++r) total[r] += double(sum[r] * exp_approx(max[r] - peak[r]));
    }
}

// One row's logits in full, with the chunked path's two-pass rules: for rows that hold a
// NaN or an infinity, where the blockwise sums lose track. above (or null): how many
// logits exceed the target's.
void recompute_row(const OutputShape& s, const float* h_row, const float* weight, const float* bias,
                   int32_t target, float* lse, int32_t* best, float* target_logit, int32_t* above = nullptr) {
    const int64_t H = s.hidden, V = s.vocab;
    std::vector<float> z(V);
    for (int64_t v = 0; v < V; ++v) {
        float dot = 0.0f;
        for (int64_t k = 0; k < H; ++k) dot += weight[v * H + k] * h_row[k];
        z[v] = dot;
    }
    *lse = row_log_sum_exp(z.data(), bias, V, best);  // z + bias from here on
    *target_logit = z[target];
    if (above) {
        int32_t count = 0;
        for (int64_t v = 0; v < V; ++v) count += z[v] > *target_logit;
        *above = count;
    }
}

}  // namespace

float row_log_sum_exp(float* z, const float* bias, int64_t V, int32_t* best) {
    const float peak = add_bias_row_max(z, bias, V);
    const double sum = row_exp_sum<false>(z, V, peak);
    int64_t index = 0;
    if (std::isnan(sum)) {
        index = argmax(z, V);
    } else {
        while (z[index] != peak) ++index;
    }
    *best = static_cast<int32_t>(index);
    return z[index] + static_cast<float>(std::log(sum));
}

float row_max(const float* z, int64_t V) {
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, -INFINITY);
    int64_t v = row_spans::row_max(z, V, lanes);
    for (; v + kLanes <= V; v += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] = z[v + l] > lanes[l] ? z[v + l] : lanes[l];
    float peak = -INFINITY;
    for (; v < V; ++v) peak = z[v] > peak ? z[v] : peak;
    for (int64_t l = 0; l < kLanes; ++l) peak = lanes[l] > peak ? lanes[l] : peak;
    return peak;
}

double row_sum_exp(const float* z, int64_t V, float peak) {
    return row_exp_sum<false>(const_cast<float*>(z), V, peak);  // <false>: reads z only
}

double output_loss_forward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                           const int32_t* targets, float* lse, int32_t* predictions) {
    const int64_t N = s.rows, H = s.hidden, V = s.vocab;
    const int64_t vocab_blocks = ceil_div(V, kVocabBlock);
    // Rows per chunk: the per-block statistics (12 bytes per block and row) stay below
    // 6 MiB whatever N is.
    const int64_t rows_per_chunk =
        std::max<int64_t>(kRowBlock, kForwardStatistics / vocab_blocks / kRowBlock * kRowBlock);
    const int64_t chunk = std::min(N, rows_per_chunk);
    BlockStatistics stats(vocab_blocks * chunk, /*ranks=*/false);
    std::vector<float> target_logit(chunk), peak(chunk);
    std::vector<double> sum(chunk);
    std::vector<int32_t> best(chunk, 0);
    double total = 0.0;
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        const int64_t rows = std::min(chunk, N - r0);
        vocab_block_statistics<false>(s, h + r0 * H, rows, weight, bias, targets + r0, nullptr, stats,
                                      target_logit.data());
        merge_blocks(stats, vocab_blocks, rows, peak.data(), sum.data(), best.data());
        for (int64_t r = 0; r < rows; ++r) {
            float row_lse;
            int32_t row_best = best[r];
            if (std::isfinite(peak[r]) && std::isfinite(sum[r]) && sum[r] > 0.0) {
                row_lse = peak[r] + static_cast<float>(std::log(sum[r]));
            } else {
                // A NaN or an infinity in the row, where the blockwise sums lose track: the
                // row on its own, with the two-pass rules (NumPy's argmax: first NaN wins).
                recompute_row(s, h + (r0 + r) * H, weight, bias, targets[r0 + r], &row_lse, &row_best,
                              &target_logit[r]);
            }
            lse[r0 + r] = row_lse;
            predictions[r0 + r] = row_best;
            total += static_cast<double>(row_lse) - static_cast<double>(target_logit[r]);
        }
    }
    return total / static_cast<double>(N);
}

// ------------------------------------------------------------------ scoring

struct RowScorer::State {
    OutputShape shape;
    const float *h, *weight, *bias;
    const int32_t* targets;
    PackedB h_t;
    BlockStatistics stats;
    std::vector<float> threshold, target_logit;

    State(const OutputShape& s, const float* h_, const float* w, const float* b, const int32_t* t)
        : shape(s), h(h_), weight(w), bias(b), targets(t), h_t(h_, s.hidden, /*trans_b=*/true, s.hidden, s.rows),
          stats(ceil_div(s.vocab, kVocabBlock) * s.rows, /*ranks=*/true), threshold(s.rows), target_logit(s.rows) {}
};

RowScorer::RowScorer(const OutputShape& s, const float* h, const float* weight, const float* bias,
                     const int32_t* targets)
    : state_(std::make_unique<State>(s, h, weight, bias, targets)) {
    // Each row's target logit before any block is reduced, so that every block counts the
    // logits above it as it goes: computed alone with the product's own arithmetic (the
    // target's block has m rows), so it equals the logit the block will hold. finish
    // checks that it does.
    State& st = *state_;
    const int64_t H = s.hidden, V = s.vocab;
    for (int64_t r = 0; r < s.rows; ++r) {
        const int32_t t = targets[r];
        const int64_t v0 = t / kVocabBlock * kVocabBlock;
        st.threshold[r] = sgemm_packed_row_block_element(std::min(kVocabBlock, V - v0), weight + t * H, h + r * H, H) +
                          bias[t];
    }
}

RowScorer::~RowScorer() = default;

int64_t RowScorer::items_for(int64_t vocab) { return ceil_div(vocab, kVocabBlock); }

int64_t RowScorer::items() const { return items_for(state_->shape.vocab); }

void RowScorer::run(int64_t item) {
    State& st = *state_;
    block_statistics<true>(st.shape, item, 0, st.shape.rows, st.shape.rows, st.h_t, st.weight, st.bias, st.targets,
                           st.threshold.data(), st.stats, st.target_logit.data());
}

void RowScorer::finish(const ScoreOutputs& out) {
    State& st = *state_;
    const int64_t rows = st.shape.rows, H = st.shape.hidden, blocks = items();
    std::vector<float> peak(rows);
    std::vector<double> sum(rows);
    std::vector<int32_t> best(rows, 0), above(rows, 0);
    merge_blocks(st.stats, blocks, rows, peak.data(), sum.data(), best.data());
    for (int64_t vb = 0; vb < blocks; ++vb)
        for (int64_t r = 0; r < rows; ++r) above[r] += st.stats.above[vb * rows + r];
    for (int64_t r = 0; r < rows; ++r) {
        float lse, target_logit = st.target_logit[r];
        if (std::isfinite(peak[r]) && std::isfinite(sum[r]) && sum[r] > 0.0 && target_logit == st.threshold[r]) {
            lse = peak[r] + static_cast<float>(std::log(sum[r]));
        } else {
            // A NaN or an infinity in the row (see output_loss_forward), or a threshold
            // that missed the block's logit: the row on its own.
            recompute_row(st.shape, st.h + r * H, st.weight, st.bias, st.targets[r], &lse, &best[r], &target_logit,
                          &above[r]);
        }
        out.log_probs[r] = target_logit - lse;
        out.predictions[r] = best[r];
        out.ranks[r] = above[r];
    }
}

void output_loss_backward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                          const int32_t* targets, const float* lse, float* dh, float* dweight, float* dbias) {
    const int64_t H = s.hidden, V = s.vocab;
    const int64_t rows_per_chunk = chunk_rows(s);
    const PackedDecoder packed(weight, V, H, ceil_div(s.rows, rows_per_chunk));
    const ScratchFloats dlogits = scratch_floats(rows_per_chunk * V);
    const float inv_rows = 1.0f / static_cast<float>(s.rows);
    for (int64_t r0 = 0; r0 < s.rows; r0 += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, s.rows - r0);
        chunk_logits(s, h + r0 * H, rows, packed.weight_t, dlogits.get());
#pragma omp parallel for if (rows * V >= kParallelMinWork) schedule(dynamic)
        for (int64_t r = 0; r < rows; ++r)
            row_softmax_gradient(dlogits.get() + r * V, bias, V, lse[r0 + r], targets[r0 + r], inv_rows);
        chunk_gradients(s, h + r0 * H, rows, r0 == 0, packed, dlogits.get(), dh + r0 * H, dweight, dbias);
    }
}

double output_loss_forward_backward(const OutputShape& s, const float* h, const float* weight, const float* bias,
                                    const int32_t* targets, float* dh, float* dweight, float* dbias) {
    const int64_t H = s.hidden, V = s.vocab;
    const int64_t rows_per_chunk = chunk_rows(s);
    const PackedDecoder packed(weight, V, H, ceil_div(s.rows, rows_per_chunk));
    const ScratchFloats dlogits = scratch_floats(rows_per_chunk * V);
    std::vector<double> row_loss(rows_per_chunk);
    const float inv_rows = 1.0f / static_cast<float>(s.rows);
    double total = 0.0;
    for (int64_t r0 = 0; r0 < s.rows; r0 += rows_per_chunk) {
        const int64_t rows = std::min(rows_per_chunk, s.rows - r0);
        chunk_logits(s, h + r0 * H, rows, packed.weight_t, dlogits.get());
        // Runs of kRowRun rows per thread, so that a thread knows its next row (see
        // row_softmax_gradient_lse).
        const int64_t runs = ceil_div(rows, kRowRun);
#pragma omp parallel for if (rows * V >= kParallelMinWork) schedule(dynamic)
        for (int64_t run = 0; run < runs; ++run)
            for (int64_t r = run * kRowRun, end = std::min(rows, r + kRowRun); r < end; ++r) {
                float* z = dlogits.get() + r * V;
                const int32_t target = targets[r0 + r];
                const float target_logit = z[target] + (bias ? bias[target] : 0.0f);
                const float lse = row_softmax_gradient_lse(z, bias, V, target, inv_rows, r + 1 < end ? z + V : nullptr);
                row_loss[r] = static_cast<double>(lse) - static_cast<double>(target_logit);
            }
        for (int64_t r = 0; r < rows; ++r) total += row_loss[r];
        chunk_gradients(s, h + r0 * H, rows, r0 == 0, packed, dlogits.get(), dh + r0 * H, dweight, dbias);
    }
    return total / static_cast<double>(s.rows);
}

// ------------------------------------------------------------------ thin layers

namespace {

// The gradient pass's vocabulary blocks come in at most this many groups, each group
// one work item with its own dh partial sum: the sums are added in group order, so dh does
// not depend on the threads, and their memory is bounded (groups x rows x H floats).
constexpr int64_t kThinGroups = 16;
// Rows per gradient pass: a block's softmax (kVocabBlock x rows floats) stays in L2
// between the logit product that writes it and the two products that read it.
constexpr int64_t kThinRows = 4 * kRowBlock;

}  // namespace

double output_loss_thin_forward_backward(const OutputShape& s, const float* h, const float* weight,
                                         const int32_t* targets, float gradient_scale, float* dh, float* dweight) {
    const int64_t N = s.rows, H = s.hidden, V = s.vocab;
    if (N <= 0 || V <= 0 || H <= 0) return 0.0;
    // Pass 1: each row's log-sum-exp, no logit stored.
    std::vector<float> lse(N), target_logit(N);
    {
        const std::vector<float> zero_bias(V, 0.0f);
        std::vector<int32_t> unused_predictions(N);
        output_loss_forward(s, h, weight, zero_bias.data(), targets, lse.data(), unused_predictions.data());
    }
    const int64_t blocks = ceil_div(V, kVocabBlock);
    const int64_t groups = std::min(blocks, kThinGroups);
    const int64_t threads = N * V * H >= kParallelMinWork ? max_threads() : 1;
    const int64_t chunk = std::min(N, kThinRows);
    // Per group its partial sum of dh^T (H x rows): dh^T += W_b^T G^T has H rows and
    // spans the rows in whole tiles, where dh = G W_b would be H = 16 columns wide.
    const ScratchFloats partial = scratch_floats(groups * H * chunk);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        const int64_t rows = std::min(chunk, N - r0);
        const float* hc = h + r0 * H;
        const int32_t* tc = targets + r0;
        const float* lc = lse.data() + r0;
        float* target_c = target_logit.data() + r0;
        // logits^T = W h^T as in pass 1 (the same products, so the same logits).
        const PackedB h_t(hc, H, /*trans_b=*/true, H, rows);
#pragma omp parallel for if (threads > 1) schedule(dynamic)
        for (int64_t g = 0; g < groups; ++g) {
            static thread_local std::vector<float> softmax_buffer;
            float* gt = thread_buffer(softmax_buffer, kVocabBlock * rows);  // G^T, block x rows
            float* dht_g = partial.get() + g * H * rows;
            const int64_t vb_begin = g * blocks / groups, vb_end = (g + 1) * blocks / groups;
            for (int64_t vb = vb_begin; vb < vb_end; ++vb) {
                const int64_t v0 = vb * kVocabBlock, m = std::min(kVocabBlock, V - v0);
                sgemm_packed_row_block(false, m, weight + v0 * H, H, h_t, 0, rows, kRowBlock,
                                       [&](int64_t j0, int64_t n, const float* z, int64_t ldz) {
                                           for (int64_t v = 0; v < m; ++v) {
                                               const float* zv = z + v * ldz;
                                               float* gv = gt + v * rows + j0;
                                               for (int64_t r = 0; r < n; ++r)
                                                   gv[r] = exp_approx(zv[r] - lc[j0 + r]) * gradient_scale;
                                           }
                                           for (int64_t r = 0; r < n; ++r) {  // one block holds each target
                                               const int64_t t = tc[j0 + r] - v0;
                                               if (t < 0 || t >= m) continue;
                                               target_c[j0 + r] = z[t * ldz + r];
                                               gt[t * rows + j0 + r] -= gradient_scale;
                                           }
                                       });
                // dW_b (+)= G^T h (block x H), h read where it lies: no packing of h or G per
                // block, and no transposed copy.
                sgemm_b_in_place_one_thread(false, m, H, rows, gt, rows, hc, H, r0 > 0 ? 1.0f : 0.0f,
                                            dweight + v0 * H, H);
                // dh^T += W_b^T G^T (H x rows).
                sgemm_b_in_place_one_thread(true, H, rows, m, weight + v0 * H, H, gt, rows, vb > vb_begin ? 1.0f : 0.0f,
                                            dht_g, rows);
            }
        }
        // dh = the groups' partial sums, in group order.
#pragma omp parallel for if (rows * H * groups >= kParallelMinWork) schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float* dst = dh + (r0 + r) * H;
            for (int64_t k = 0; k < H; ++k) {
                float sum = partial[k * rows + r];
                for (int64_t g = 1; g < groups; ++g) sum += partial[(g * H + k) * rows + r];
                dst[k] = sum;
            }
        }
    }
    double total = 0.0;
    for (int64_t r = 0; r < N; ++r) total += double(lse[r]) - double(target_logit[r]);
    return total;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
