#include "lstm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "activations.h"
#include "allocator.h"
#include "gemm.h"
#include "kernels/kernel_set.h"
#include "parallel.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace {

// The scalar functions, with their vector spans from the instruction set's row family
// (kernels/<isa>/row_spans.h) for activate().
struct Sigmoid {
    template <bool kBias>
    static int64_t span(int64_t n, const float* in, const float* bias, float* out) {
        return row_spans::sigmoid<kBias>(n, in, bias, out);
    }
    float operator()(float x) const { return sigmoid(x); }
};
struct Tanh {
    template <bool kBias>
    static int64_t span(int64_t n, const float* in, const float* bias, float* out) {
        return row_spans::tanh<kBias>(n, in, bias, out);
    }
    float operator()(float x) const { return tanh_approx(x); }
};

// out[j] = fn(in[j] + bias[j]) (bias may be null: fn(in[j])) for j in [0, n): the vector
// span first, the last few floats by the scalar function. A pass per function, so that
// each iteration's dependence chains are short (one pass over all four gates and the
// state measured slower: its chain outgrows the reorder window).
template <bool kBias, class Fn>
inline void activate_impl(int64_t n, const float* in, const float* bias, float* out, Fn fn) {
    for (int64_t j = Fn::template span<kBias>(n, in, bias, out); j < n; ++j)
        out[j] = fn(kBias ? in[j] + bias[j] : in[j]);
}

template <class Fn>
inline void activate(int64_t n, const float* in, const float* bias, float* out, Fn fn) {
    if (bias) activate_impl<true>(n, in, bias, out, fn);
    else activate_impl<false>(n, in, bias, out, fn);
}

// Gradient through one cell: from dh (total gradient reaching h_t) and dc_next (reaching
// c_t from step t+1) to the gate pre-activations dpre (4H); dc_next becomes d c_{t-1}.
void lstm_cell_backward(int64_t H, const float* gate, const float* c, const float* c_prev,
                        const float* dh, float* dc_next, float* dpre) {
    const float* i = gate;
    const float* f = gate + H;
    const float* g = gate + 2 * H;
    const float* o = gate + 3 * H;
    constexpr int64_t kUnits = 128;  // tanh(c) a slice at a time, into a buffer on the stack
    float tanh_c[kUnits];
    for (int64_t j0 = 0; j0 < H; j0 += kUnits) {
        const int64_t n = std::min(kUnits, H - j0);
        activate(n, c + j0, nullptr, tanh_c, Tanh());
#pragma GCC ivdep
        for (int64_t u = 0; u < n; ++u) {
            const int64_t j = j0 + u;
            const float dc = dc_next[j] + dh[j] * o[j] * (1.0f - tanh_c[u] * tanh_c[u]);
            dpre[j] = dc * g[j] * i[j] * (1.0f - i[j]);
            dpre[H + j] = dc * c_prev[j] * f[j] * (1.0f - f[j]);
            dpre[2 * H + j] = dc * i[j] * (1.0f - g[j] * g[j]);
            dpre[3 * H + j] = dh[j] * tanh_c[u] * o[j] * (1.0f - o[j]);
            dc_next[j] = dc * f[j];
        }
    }
}

}  // namespace

void lstm_cell_forward(int64_t H, const float* bias, float* a, const float* c_prev, float* c, float* h) {
    float* i = a;
    float* f = a + H;
    float* g = a + 2 * H;
    float* o = a + 3 * H;
    activate(2 * H, i, bias, i, Sigmoid());  // i and f are adjacent
    activate(H, g, bias + 2 * H, g, Tanh());
    activate(H, o, bias + 3 * H, o, Sigmoid());
    // c may be c_prev (generation updates the state in place): same index only, so no
    // dependence between iterations.
    int64_t j = row_spans::lstm_state(H, i, f, g, o, c_prev, c, h);
#pragma GCC ivdep
    for (; j < H; ++j) {
        c[j] = f[j] * c_prev[j] + i[j] * g[j];
        h[j] = o[j] * tanh_approx(c[j]);
    }
}

PackedLstmLayer::PackedLstmLayer(const LstmLayerView& layer, int64_t H)
    : w_ih_t(layer.w_ih, layer.input, /*trans_b=*/true, layer.input, 4 * H),
      w_hh_t(layer.w_hh, H, /*trans_b=*/true, H, 4 * H),
      bias(4 * H) {
    for (int64_t j = 0; j < 4 * H; ++j) bias[j] = layer.b_ih[j] + layer.b_hh[j];
}

namespace {

// The rows [b0, b1) of a B-row recurrence that thread id of team computes alone, with
// all of the packed recurrent weights (weight_floats); empty (b0 == b1 == 0) when the rows
// are not split. Every bit of the results must be that of the shared product.
// - At least two tiles of MR rows per thread (W's B = 32): whole tiles, so that every
//   tile has the rows it has in the whole product and each share more than one tile's
//   rows (k_block's blocking for many rows).
// - Fewer (zaremba-small's B = 20 is 3 tiles), when each tile of the whole product runs
//   one chain of multiply-adds per element (no edge tile of fewer than kOneChainRows
//   rows): the rows split evenly (10 + 10 rather than 8 + 12), each share computed
//   row-invariant, i.e. each row with that arithmetic and the k blocks of many rows,
//   whichever rows are beside it. Only while the weights fit a core's L2 (H <= 256):
//   each thread reads all of them every step, and at H = 650 (config C) twice 6.8 MB a
//   step from L3 cost more than the barriers saved.
struct RowShare {
    int64_t b0 = 0, b1 = 0;
    bool row_invariant = false;
    RowShare(int64_t B, int64_t team, int64_t id, int64_t weight_floats) {
        const int64_t tiles = ceil_div(B, MR), edge = B % MR;
        if (team < 2) return;
        if (tiles / team >= 2) {
            b0 = id * tiles / team * MR;
            b1 = std::min(B, (id + 1) * tiles / team * MR);
        } else if (B > MR && B >= team && (edge == 0 || edge >= kOneChainRows) && weight_floats <= kL2Floats) {
            row_invariant = true;
            b0 = id * B / team;
            b1 = (id + 1) * B / team;
        }
    }
    bool active() const { return b1 > b0; }
    static constexpr int64_t kL2Floats = 1 << 18;  // 1 MB
};

// A leading dimension for rows of n floats that is not a multiple of 1 KB: the transposed
// packing of A reads MR-float strips down a column, and rows 4 KB apart (4H = 1024 at
// H = 256) map to one L1 set and evict each other.
int64_t unaliased_ld(int64_t n) { return n % 256 == 0 ? n + 16 : n; }

// db[j] = the sum of column j of d (rows x n, leading dimension ld), with the arithmetic
// of the product d^T 1 (sgemm_packed_shared_a against a column of ones, which it replaced):
// per k block of sgemm_k_block(n, rows) rows a sum from zero in row order, the blocks'
// sums added in order. Threads over columns.
void column_sums(int64_t rows, int64_t n, const float* d, int64_t ld, float* db) {
    const int64_t kb = sgemm_k_block(n, rows);
    constexpr int64_t kColumns = 256;  // a chunk's running sums stay in L1
#pragma omp parallel for if (rows * n >= kParallelMinWork) schedule(static)
    for (int64_t j0 = 0; j0 < n; j0 += kColumns) {
        const int64_t w = std::min(kColumns, n - j0);
        float sum[kColumns];
        for (int64_t p0 = 0; p0 < rows; p0 += kb) {
            std::fill(sum, sum + w, 0.0f);
            for (int64_t p = p0; p < std::min(rows, p0 + kb); ++p) {
                const float* row = d + p * ld + j0;
#pragma GCC ivdep
                for (int64_t j = 0; j < w; ++j) sum[j] += row[j];
            }
            for (int64_t j = 0; j < w; ++j) db[j0 + j] = p0 == 0 ? sum[j] : sum[j] + db[j0 + j];
        }
    }
}

}  // namespace

void lstm_forward(const LstmShape& s, const float* x, const float* w_ih, const float* w_hh,
                  const float* b_ih, const float* b_hh, const float* h0, const float* c0,
                  float* hs, float* cs, float* gates) {
    const int64_t B = s.batch, T = s.steps, I = s.input, H = s.hidden, G = 4 * H;
    // All steps' input projections in one product: gates <- x W_ih^T.
    sgemm(false, true, B * T, G, I, x, I, w_ih, I, 0.0f, gates, G);
    std::vector<float> bias(G);
    for (int64_t j = 0; j < G; ++j) bias[j] = b_ih[j] + b_hh[j];
    const PackedB w_hh_t(w_hh, H, /*trans_b=*/true, H, G);  // packed once, used T times
    // A thread with rows of its own reads all of W_hh every step: beyond RowShare's L2 bound
    // (D's H = 512: 4 MB, with 2 MB of L2 a core) its panels go first to last at even steps
    // and last to first at odd ones, so that each step starts on those the step before left
    // in L2 (sgemm_packed_one_thread_sweep). Row-invariant shares stay within the bound.
    const bool sweep = G * H > RowShare::kL2Floats;
    // Row b of step t lives at gates[(b*T + t) * G]: stride T*G between batch rows.
    const auto cells = [&](int64_t t, int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = b * T + t;
            const float* c_prev = t == 0 ? c0 + b * H : cs + (row - 1) * H;
            lstm_cell_forward(H, bias.data(), gates + row * G, c_prev, cs + row * H, hs + row * H);
        }
    };
#pragma omp parallel if (B * G * H >= kParallelMinWork)
    {
        const RowShare share(B, num_threads_in_region(), thread_id(), G * H);
        if (share.active()) {
            // Each thread its own rows, whole tiles of the product, through every step: a
            // row's recurrence needs no other row, so the threads never wait for each
            // other (ONNX Runtime's LSTM splits the batch so; two barriers per step cost
            // D's inference more than reading all of W_hh per thread).
            const auto [b0, b1, row_invariant] = share;
            for (int64_t t = 0; t < T; ++t) {
                const float* h_prev = t == 0 ? h0 + b0 * H : hs + (b0 * T + t - 1) * H;
                float* c = gates + (b0 * T + t) * G;
                if (sweep) {
                    sgemm_packed_one_thread_sweep(false, b1 - b0, h_prev, t == 0 ? H : T * H, w_hh_t, 1.0f, c, T * G,
                                                  t % 2 == 1);
                } else {
                    sgemm_packed_one_thread(false, b1 - b0, h_prev, t == 0 ? H : T * H, w_hh_t, 1.0f, c, T * G,
                                            row_invariant);
                }
                cells(t, b0, b1);
            }
        } else {
            // Per step each thread's share of the recurrent product, then its rows' cells;
            // two barriers per step, no fork/join.
            for (int64_t t = 0; t < T; ++t) {
                const float* h_prev = t == 0 ? h0 : hs + (t - 1) * H;
                const int64_t ld_h = t == 0 ? H : T * H;
                sgemm_packed_team_share(false, B, h_prev, ld_h, w_hh_t, 1.0f, gates + t * G, T * G);
#pragma omp barrier
#pragma omp for schedule(static)
                for (int64_t b = 0; b < B; ++b) cells(t, b, b + 1);
                // implicit barrier: h_t complete before the next step's product
            }
        }
    }
}

void lstm_backward(const LstmShape& s, const float* dhs, const float* dh_n, const float* dc_n,
                   const float* x, const float* w_ih, const float* w_hh, const float* h0,
                   const float* c0, const float* hs, const float* cs, const float* gates,
                   float* dx, float* dw_ih, float* dw_hh, float* db, float* dh0, float* dc0) {
    const int64_t B = s.batch, T = s.steps, I = s.input, H = s.hidden, G = 4 * H;
    const int64_t ldp = unaliased_ld(G);
    const ScratchFloats dpre = scratch_floats(B * T * ldp);  // every row written by the step loop
    std::vector<float> dh(B * H);
    // dh0/dc0 double as the running gradients into h_{t-1} and c_{t-1}.
    float* dh_next = dh0;
    float* dc_next = dc0;
    if (dh_n) std::memcpy(dh_next, dh_n, sizeof(float) * B * H); else std::fill(dh_next, dh_next + B * H, 0.0f);
    if (dc_n) std::memcpy(dc_next, dc_n, sizeof(float) * B * H); else std::fill(dc_next, dc_next + B * H, 0.0f);
    const PackedB w_hh_packed(w_hh, H, /*trans_b=*/false, G, H);
    const auto cells = [&](int64_t t, int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = b * T + t;
            float* dh_b = dh.data() + b * H;
            for (int64_t j = 0; j < H; ++j) dh_b[j] = dhs[row * H + j] + dh_next[b * H + j];
            const float* c_prev = t == 0 ? c0 + b * H : cs + (row - 1) * H;
            lstm_cell_backward(H, gates + row * G, cs + row * H, c_prev, dh_b, dc_next + b * H,
                               dpre.get() + row * ldp);
        }
    };
    // Per step only the recurrence: dpre_t from dh, then dh_{t-1} = dpre_t W_hh; one
    // parallel region for all steps, as in the forward pass.
#pragma omp parallel if (B * G * H >= kParallelMinWork)
    {
        const RowShare share(B, num_threads_in_region(), thread_id(), G * H);
        if (share.active()) {
            // Each thread its own rows through every step, as in the forward pass: no
            // barriers, and no thread reads what the other wrote.
            const auto [b0, b1, row_invariant] = share;
            for (int64_t t = T - 1; t >= 0; --t) {
                cells(t, b0, b1);
                sgemm_packed_one_thread(false, b1 - b0, dpre.get() + (b0 * T + t) * ldp, T * ldp, w_hh_packed, 0.0f,
                                        dh_next + b0 * H, H, row_invariant);
            }
        } else {
            for (int64_t t = T - 1; t >= 0; --t) {
#pragma omp for schedule(static)
                for (int64_t b = 0; b < B; ++b) cells(t, b, b + 1);
                // implicit barrier: dpre_t complete, dh_next read
                sgemm_packed_team_share(false, B, dpre.get() + t * ldp, T * ldp, w_hh_packed, 0.0f, dh_next, H);
#pragma omp barrier
            }
        }
    }
    // The input gradient and the weight gradients as large products over all B*T rows.
    const int64_t rows = B * T;
    sgemm(false, false, rows, I, G, dpre.get(), ldp, w_ih, I, 0.0f, dx, I);
    // dW_ih = dpre^T x and dW_hh = dpre^T h_prev in one pass over dpre (B*T x 4H, the
    // largest operand), h_prev packed straight from h0 and hs.
    const PackedB x_packed(x, I, /*trans_b=*/false, rows, I);
    const PackedB h_prev_packed(
        [=](int64_t r) { return r % T == 0 ? h0 + (r / T) * H : hs + (r - 1) * H; }, rows, H);
    // db = dpre^T 1: as column sums, unless the product's last tile of rows (of 4H) is one
    // the microkernel computes with several k-chains (AVX2 at 4H = 6n + 2), whose sums
    // column_sums does not reproduce. As a column of ones beside dW it took a whole edge
    // tile per tile of rows, for one column.
    const int64_t edge = G % MR;
    if (edge == 0 || edge >= kOneChainRows) {
        sgemm_packed_shared_a(true, G, dpre.get(), ldp, {{x_packed, dw_ih, I}, {h_prev_packed, dw_hh, H}}, 0.0f);
        column_sums(rows, G, dpre.get(), ldp, db);
    } else {
        static const float kOne = 1.0f;
        const PackedB ones([](int64_t) { return &kOne; }, rows, 1);
        sgemm_packed_shared_a(true, G, dpre.get(), ldp,
                              {{x_packed, dw_ih, I}, {h_prev_packed, dw_hh, H}, {ones, db, 1}}, 0.0f);
    }
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
