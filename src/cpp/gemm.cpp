#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "allocator.h"
#include "kernels/kernel_set.h"
#include "parallel.h"
#include "prefetch.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace {

// The microkernel's register tile MR x NR comes with its family (kernels/<isa>/
// gemm_micro.h); the cache blocking around it: a KC x NR panel of B stays in L1, an
// MC x KC block of A in L2.
constexpr int64_t KC = 256;
constexpr int64_t kMaxSingleKBlock = 2 * KC;  // see k_block
constexpr int64_t MC = MR * 16;

// ------------------------------------------------------------------ microkernels

// The kernel (kernels/<isa>/gemm_micro.h) for the first mr rows of a tile: edge tiles and few-row products (a batch
// of one in generation) compute only the rows that exist.
// nr < NR: an edge panel's first nr columns (micro_kernel_edge). l2_lines cache lines from
// l2_next are requested into L2 (by the full panel's kernel, or before an edge panel's).
template <int R = MR>
inline void micro_kernel_rows(int64_t mr, int64_t nr, int64_t kc, const float* a, const float* b, float* c,
                              int64_t ldc, bool accumulate, const float* l2_next = nullptr, int64_t l2_lines = 0) {
    if constexpr (R > 1) {
        if (mr < R) return micro_kernel_rows<R - 1>(mr, nr, kc, a, b, c, ldc, accumulate, l2_next, l2_lines);
    }
    if (nr < NR) {
        for (int64_t l = 0; l < l2_lines; ++l) prefetch_line<2>(l2_next + l * kFloatsPerLine);
        micro_kernel_edge<R>(nr, kc, a, b, c, ldc, accumulate);
    } else {
        micro_kernel<R>(kc, a, b, c, ldc, accumulate, l2_next, l2_lines);
    }
}

// The same with B read in place (families with kBInPlace; the others never call it).
template <int R = MR>
inline void micro_kernel_rows_b_in_place([[maybe_unused]] int64_t mr, [[maybe_unused]] int64_t nr,
                                         [[maybe_unused]] int64_t kc, [[maybe_unused]] const float* a,
                                         [[maybe_unused]] const float* b, [[maybe_unused]] int64_t ldb,
                                         [[maybe_unused]] float* c, [[maybe_unused]] int64_t ldc,
                                         [[maybe_unused]] bool accumulate) {
    if constexpr (R > 1) {
        if (mr < R) return micro_kernel_rows_b_in_place<R - 1>(mr, nr, kc, a, b, ldb, c, ldc, accumulate);
    }
    if constexpr (kBInPlace) micro_kernel_b_in_place<R>(nr, kc, a, b, ldb, c, ldc, accumulate);
}

// ------------------------------------------------------------------ packing


// Rows [i0, i0+mc) and columns [k0, k0+kc) of op(A) into MR-row panels, each kc x MR,
// padded past mc so that the microkernel never branches on the edge.
void pack_a(const float* a, int64_t lda, bool trans_a, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            float* dst) {
    if (trans_a) {  // op(A)(i, k) = a[k * lda + i]: row k of a holds k's mc floats, one after another
        // Row by row, each read once and in order, its MR-float pieces to every panel.
        // Panel by panel, each of a panel's kc pieces came from another row of a, lda
        // apart (a page or more in the output layer's dW = dlogits^T h and the LSTM's
        // weight gradients), and the pack was a large share of those products.
        const int64_t full = mc / MR * MR;
        for (int64_t p = 0; p < kc; ++p) {
            const float* src = a + (k0 + p) * lda + i0;
            for (int64_t ip = 0; ip < full; ip += MR)
                std::memcpy(dst + ip * kc + p * MR, src + ip, sizeof(float) * MR);
            if (full < mc) {
                float* piece = dst + full * kc + p * MR;
                std::memcpy(piece, src + full, sizeof(float) * (mc - full));
                std::fill(piece + (mc - full), piece + MR, 0.0f);
            }
        }
        return;
    }
    // op(A)(i, k) = a[i * lda + k]: MR row streams per panel, the panel written in order.
    // Padding rows repeat the tile's last row, so that the edge tile is packed by the
    // vectorised path too (M = 20 and 32 in the LSTM steps end in a 2-row tile, packed
    // every step). Their results are never stored, or land in C's padding.
    for (int64_t ip = 0; ip < mc; ip += MR) {
        const int64_t mr = std::min(MR, mc - ip);
        float* panel = dst + ip * kc;
        const float* rows[MR];
        for (int64_t r = 0; r < MR; ++r) rows[r] = a + (i0 + ip + std::min(r, mr - 1)) * lda + k0;
        int64_t p = pack_a_rows(rows, kc, panel);
        for (; p < kc; ++p)
            for (int64_t r = 0; r < MR; ++r) panel[p * MR + r] = rows[r][p];
    }
}

// The k blocks [pg, pg_end) of rows [i0, i0+mc) of op(A), kb columns each (the last may be
// shorter), block pc at dst + (pc - pg) * (mc rounded up to MR), as pack_a packs each.
// Untransposed, tile by tile through all the blocks, the next tile's rows requested into
// L2 meanwhile: each row is read as one stream across the group (several blocks at the
// output layer's dh = dlogits W, whose rows come from L3) rather than in one short piece
// per block, every piece a new start for the hardware prefetcher. The same bytes as
// block by block.
void pack_a_group(const float* a, int64_t lda, bool trans_a, int64_t i0, int64_t mc, int64_t pg, int64_t pg_end,
                  int64_t kb, float* dst) {
    const int64_t mc_tiles = ceil_div(mc, MR) * MR;
    if (trans_a) {
        for (int64_t pc = pg; pc < pg_end; pc += kb)
            pack_a(a, lda, true, i0, mc, pc, std::min(kb, pg_end - pc), dst + (pc - pg) * mc_tiles);
        return;
    }
    for (int64_t ip = 0; ip < mc; ip += MR)
        for (int64_t pc = pg; pc < pg_end; pc += kb) {
            const int64_t kc = std::min(kb, pg_end - pc);
            for (int64_t r = ip + MR; r < std::min(mc, ip + 2 * MR); ++r)
                prefetch_range<2>(a + (i0 + r) * lda + pc, a + (i0 + r) * lda + pc + kc);
            pack_a(a, lda, false, i0 + ip, std::min(MR, mc - ip), pc, kc, dst + (pc - pg) * mc_tiles + ip * kc);
        }
}

// Columns [j0, j0+nr) (nr <= NR) of a K-row op(B) whose row p starts at row_of(p), into
// one K x NR panel, zero-padded.
template <class RowOf>
void pack_b_panel_rows(const RowOf& row_of, int64_t k, int64_t j0, int64_t nr, float* dst) {
    if (nr == NR) {  // a copy of fixed length is inlined
        for (int64_t p = 0; p < k; ++p) std::memcpy(dst + p * NR, row_of(p) + j0, sizeof(float) * NR);
        return;
    }
    for (int64_t p = 0; p < k; ++p) {
        const float* row = row_of(p);
        for (int64_t j = 0; j < NR; ++j) dst[p * NR + j] = j < nr ? row[j0 + j] : 0.0f;
    }
}

// The same for a strided op(B).
void pack_b_panel(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t j0, int64_t nr, float* dst) {
    if (trans_b) {  // op(B)(k, j) = b[j * ldb + k]: NR column streams, the panel written in order
        const float* cols[NR];
        for (int64_t j = 0; j < NR; ++j) cols[j] = j < nr ? b + (j0 + j) * ldb : nullptr;
        int64_t p = nr == NR ? pack_b_columns(cols, k, dst) : 0;  // the family's vector pack, if any
        for (; p < k; ++p)
            for (int64_t j = 0; j < NR; ++j) dst[p * NR + j] = j < nr ? cols[j][p] : 0.0f;
        return;
    }
    // op(B)(k, j) = b[k * ldb + j]
    pack_b_panel_rows([b, ldb](int64_t p) { return b + p * ldb; }, k, j0, nr, dst);
}

// A row-invariant product's edge tile of mr < kOneChainRows rows over panels [jp0, jp1)
// of C (row c_row's first column is panel jp0's): as many panels as whole groups of
// kOneChainPanels full panels cover, each group by micro_kernel_one_chain. Returns the
// first panel left.
template <int R = kOneChainRows - 1>
int64_t one_chain_panels(int64_t mr, int64_t kc, const float* a_panel, const PackedB& b, int64_t pc, int64_t jp0,
                         int64_t jp1, float* c_row, int64_t ldc, bool accumulate) {
    if constexpr (R < 1) {
        return jp0;
    } else {
        if constexpr (R > 1) {
            if (mr < R) return one_chain_panels<R - 1>(mr, kc, a_panel, b, pc, jp0, jp1, c_row, ldc, accumulate);
        }
        constexpr int64_t P = kOneChainPanels<R>;
        const int64_t full_end = std::min(jp1, b.n() / NR);
        int64_t jp = jp0;
        for (; jp + P <= full_end; jp += P)
            micro_kernel_one_chain<R>(kc, a_panel, b.panel(jp) + pc * NR, b.k() * NR, c_row + (jp - jp0) * NR, ldc,
                                      accumulate);
        return jp;
    }
}

// A full tile and the e < kOneChainRows rows after it (a_panel: the tile's, the next at
// a_panel + MR * kc) by the family's tall tile, when it has one (kTallTile).
template <int E = 1>
void tall_tile([[maybe_unused]] int64_t e, [[maybe_unused]] int64_t nr, [[maybe_unused]] int64_t kc,
               [[maybe_unused]] const float* a_panel, [[maybe_unused]] const float* b_panel,
               [[maybe_unused]] float* c_tile, [[maybe_unused]] int64_t ldc, [[maybe_unused]] bool accumulate) {
    if constexpr (kTallTile && E < kOneChainRows) {
        if (e > E) return tall_tile<E + 1>(e, nr, kc, a_panel, b_panel, c_tile, ldc, accumulate);
        micro_kernel_tall<E>(nr, kc, a_panel, a_panel + MR * kc, b_panel, c_tile, ldc, accumulate);
    }
}

// One thread's share: rows [i0, i0+mc) x panels [jp0, jp1) of C, for the k-range [pc, pc+kc)
// whose A block is already packed. whole_tiles: the last tile's padding rows are computed
// too (C has room for them), so every row runs the same full-tile instructions. C's first
// column is that of panel c_panel0. row_invariant: an edge tile's rows are computed with
// the full tile's arithmetic (one chain per element), so that no row's result depends on
// how many rows the product has (the few-row kernels run several k-chains): kernels of
// kOneChainRows rows or more as they are, fewer rows with the full tile before them by the
// family's tall tile (kTallTile), else by micro_kernel_one_chain over groups of panels, or
// as kOneChainRows rows into a buffer on the panels left over.
void compute_block(int64_t mc, int64_t kc, const float* a_packed, const PackedB& b, int64_t pc,
                   int64_t jp0, int64_t jp1, float* c_rows, int64_t ldc, bool accumulate,
                   bool whole_tiles = false, int64_t c_panel0 = 0, bool row_invariant = false) {
    static_assert(kOneChainRows >= 1 && kOneChainRows <= MR);
    alignas(64) float edge[kOneChainRows * NR];
    const int64_t n = b.n();
    const int64_t edge_rows = row_invariant && !whole_tiles ? mc % MR : 0;
    const int64_t few_at = edge_rows > 0 && edge_rows < kOneChainRows ? mc - edge_rows : mc;  // that tile's row
    const bool tall = kTallTile && few_at < mc && few_at >= MR;  // the tile before them takes the few rows
    const int64_t few_done = few_at < mc && !tall ? one_chain_panels(edge_rows, kc, a_packed + few_at * kc, b, pc, jp0, jp1,
                                                            c_rows + few_at * ldc + (jp0 - c_panel0) * NR, ldc,
                                                            accumulate)
                                         : jp0;  // panels of the few-row tile done
    for (int64_t jp = jp0; jp < jp1; ++jp) {
        const int64_t nr = std::min(NR, n - jp * NR);
        const float* b_panel = b.panel(jp) + pc * NR;
        // The next panel comes from L3 (the packed decoder weight is megabytes): request it
        // into L2 a slice per tile, so the first tile on it does not wait for memory. With
        // few tiles per panel (the per-step products, M = batch) the prefetches cost more
        // than they save.
        const int64_t tiles = ceil_div(mc, MR), lines_per_tile = ceil_div(kc * NR / kFloatsPerLine, tiles);
        const float* b_next = jp + 1 < jp1 && tiles >= 8 ? b.panel(jp + 1) + pc * NR : nullptr;
        for (int64_t ip = 0; ip < mc; ip += MR) {
            const int64_t mr = whole_tiles ? MR : std::min(MR, mc - ip);
            const float* l2_next = b_next ? b_next + (ip / MR) * lines_per_tile * kFloatsPerLine : nullptr;
            const int64_t l2_lines = b_next ? lines_per_tile : 0;
            if (ip == few_at && (tall || jp < few_done)) {
                for (int64_t l = 0; l < l2_lines; ++l) prefetch_line<2>(l2_next + l * kFloatsPerLine);
                continue;
            }
            float* c_tile = c_rows + ip * ldc + (jp - c_panel0) * NR;
            const float* a_panel = a_packed + ip * kc;
            if (tall && ip + MR == few_at) {
                for (int64_t l = 0; l < l2_lines; ++l) prefetch_line<2>(l2_next + l * kFloatsPerLine);
                tall_tile(edge_rows, nr, kc, a_panel, b_panel, c_tile, ldc, accumulate);
                continue;
            }
            if (!row_invariant || mr >= kOneChainRows) {  // an edge panel's columns by the masked kernels
                micro_kernel_rows(mr, nr, kc, a_panel, b_panel, c_tile, ldc, accumulate, l2_next, l2_lines);
                continue;
            }
            // The padding rows of the packed panel are computed too (and dropped).
            micro_kernel_rows(kOneChainRows, nr, kc, a_panel, b_panel, edge, NR, false, l2_next, l2_lines);
            for (int64_t r = 0; r < mr; ++r)
                for (int64_t j = 0; j < nr; ++j)
                    c_tile[r * ldc + j] = accumulate ? c_tile[r * ldc + j] + edge[r * NR + j] : edge[r * NR + j];
        }
    }
}

// A product whose k runs in several blocks revisits each C tile once per block. An item
// (MC rows times many panels: C logits' 112 x 10000 is 4.5 MB) that ran block by block over
// all its panels read its C block back from L3 every time. Instead its columns go through
// the k blocks a chunk at a time (up to kCChunkFloats of C, which stays in L2), with A's
// blocks packed once for all chunks (up to kAGroupFloats of them at a time). Each element
// of C still adds its blocks' chains in the order of k.
constexpr int64_t kAGroupFloats = 4 * MC * KC;
constexpr int64_t kCChunkFloats = 64 * 1024;

float* thread_a_buffer() {
    static thread_local std::vector<float> buffer;
    return thread_buffer(buffer, std::max(MC * kMaxSingleKBlock, kAGroupFloats));
}

}  // namespace

namespace {

// Every panel of a K x N op(B) into data, threads over panels: pack(j0, nr, dst) packs one.
template <class PackPanel>
void pack_panels(int64_t k, int64_t n, float* data, const PackPanel& pack) {
    const int64_t panels = ceil_div(n, NR);
#pragma omp parallel for if (k * n >= kParallelMinWork) schedule(dynamic)
    for (int64_t jp = 0; jp < panels; ++jp) pack(jp * NR, std::min(NR, n - jp * NR), data + jp * k * NR);
}

}  // namespace

PackedB::PackedB(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t n)
    : k_(k), n_(n), data_(scratch_floats(ceil_div(n, NR) * k * NR)) {
    pack_panels(k, n, data_.get(),
                [&](int64_t j0, int64_t nr, float* dst) { pack_b_panel(b, ldb, trans_b, k, j0, nr, dst); });
}

PackedB::PackedB(const std::function<const float*(int64_t)>& row, int64_t k, int64_t n)
    : k_(k), n_(n), data_(scratch_floats(ceil_div(n, NR) * k * NR)) {
    pack_panels(k, n, data_.get(), [&](int64_t j0, int64_t nr, float* dst) { pack_b_panel_rows(row, k, j0, nr, dst); });
}

std::pair<PackedB, PackedB> PackedB::both_ways(const float* b, int64_t ldb, int64_t rows, int64_t cols) {
    PackedB b_t, b_as_is;
    b_t.k_ = cols, b_t.n_ = rows, b_t.data_ = scratch_floats(ceil_div(rows, NR) * cols * NR);
    b_as_is.k_ = rows, b_as_is.n_ = cols, b_as_is.data_ = scratch_floats(ceil_div(cols, NR) * rows * NR);
    const int64_t blocks = ceil_div(rows, NR), panels = ceil_div(cols, NR);
#pragma omp parallel for if (rows * cols >= kParallelMinWork) schedule(dynamic)
    for (int64_t block = 0; block < blocks; ++block) {
        const int64_t r0 = block * NR, r1 = std::min(rows, r0 + NR);
        pack_b_panel(b, ldb, /*trans_b=*/true, cols, r0, r1 - r0, b_t.data_.get() + block * cols * NR);
        for (int64_t jp = 0; jp < panels; ++jp)  // rows [r0, r1) of every panel of b, from L1
            pack_b_panel(b + r0 * ldb, ldb, /*trans_b=*/false, r1 - r0, jp * NR, std::min(NR, cols - jp * NR),
                         b_as_is.data_.get() + (jp * rows + r0) * NR);
    }
    return {std::move(b_t), std::move(b_as_is)};
}

const float* PackedB::panel(int64_t j) const { return data_.get() + j * k_ * NR; }

namespace {

// The work of one product split into items: row blocks of at most MC rows times groups
// of NR-column panels. The rows are shared evenly between the blocks (M = 104 as 96 + 8
// left one of two threads idle in the output layer) and there are enough panel groups
// that every thread gets the same number of items.
//
// sgemm_packed_shared_a's threads take items as they finish the last one
// (shared_as_they_come): on a shared machine one core can run slower than the other for
// seconds, and fixed shares then leave the faster one waiting. Its wide products are cut
// into at least 4 items per thread, as long as each panel group stays wide enough
// (kMinGroupPanels) for packing its A block again to cost little. Which thread computes an item does not
// change a bit of C.
constexpr int64_t kMinGroupPanels = 16;

struct GemmItems {
    int64_t rows_per_block, panels, panel_groups, count;
    GemmItems(int64_t m, int64_t n, int threads, bool shared_as_they_come) {
        const int64_t row_blocks = ceil_div(m, MC);
        rows_per_block = ceil_div(ceil_div(m, row_blocks), MR) * MR;
        panels = ceil_div(n, NR);
        // Each panel group packs the A blocks again: with many row blocks one group is
        // balanced enough (105 blocks on 2 threads: 53 + 52).
        const bool many_blocks = row_blocks >= 8 * int64_t(threads);
        panel_groups = many_blocks ? 1 : std::min(panels, int64_t(threads) / std::gcd(row_blocks, int64_t(threads)));
        if (shared_as_they_come && threads > 1 && row_blocks * panel_groups < 4 * threads) {
            int64_t groups = std::min(panels / kMinGroupPanels, ceil_div(4 * threads, row_blocks));
            while (groups > 1 && row_blocks * groups % threads != 0) --groups;  // whole rounds of items
            panel_groups = std::max(panel_groups, groups);
        }
        count = ceil_div(m, rows_per_block) * panel_groups;
    }
    // Uneven groups put the wider ones first, so that with the last row block (the
    // shortest) last too, items come largest first and threads taking them as they come
    // finish together (B's dh product: 3 row blocks x 2 groups of 13 panels, as 7 + 6).
    int64_t first_panel(int64_t group) const { return ceil_div(group * panels, panel_groups); }
    // What an item covers of an m-row product: rows [i0, i0 + mc), panels [jp0, jp1).
    struct Block {
        int64_t i0, mc, jp0, jp1;
    };
    Block block(int64_t item, int64_t m) const {
        const int64_t group = item % panel_groups, i0 = item / panel_groups * rows_per_block;
        return {i0, std::min(rows_per_block, m - i0), first_panel(group), first_panel(group + 1)};
    }
};

// The k range is split evenly too, in multiples of 4 (the AVX2 kernel's unrolling):
// K = 650 runs as 220 + 220 + 210 rather than 256 + 256 + 138. Up to 2 KC it stays one
// block: the B panel then spills from L1 to L2, but each C tile is written once instead
// of stored and reloaded, and A is packed once (the LSTM's per-step products at H = 512,
// K = 512, measured faster so).
// With a single tile of rows (generation's batch of one) no B panel is reused at all, so
// any K whose A panel fits the buffer is one block.
int64_t k_block(int64_t m, int64_t k) {
    const int64_t single_block = m <= MR ? MC / MR * kMaxSingleKBlock : kMaxSingleKBlock;
    if (k <= single_block) return ceil_div(k, 4) * 4;
    return std::min(KC, ceil_div(ceil_div(k, ceil_div(k, KC)), 4) * 4);
}

// Items [first, last) of C = op(A) B + beta C for each target, for shapes with work in
// them. The targets' panels are numbered one after another and the items share them out,
// so each packed block of op(A) serves every target.
// row_invariant: see compute_block; the k blocking is then that of a many-row product.
// sweep: each panel through all its k blocks before the next (chunks of one panel), and
// with kBackward the panels last to first: see sgemm_packed_one_thread_sweep.
enum class Sweep { kDefault, kForward, kBackward };
void run_items(const GemmItems& items, int64_t first, int64_t last, bool trans_a, int64_t m, const float* a,
               int64_t lda, const ProductTarget* targets, int64_t count, float beta, bool row_invariant = false,
               Sweep sweep = Sweep::kDefault) {
    const int64_t k = targets[0].b.k(), kb = k_block(row_invariant ? std::max(m, MR + 1) : m, k);
    for (int64_t item = first; item < last; ++item) {
        const auto [i0, mc, jp0, jp1] = items.block(item, m);
        float* a_packed = thread_a_buffer();
        // A's k blocks [pg, pg + group) packed one after another (block pc at (pc - pg) *
        // mc_tiles), and the item's panels in chunks of about kCChunkFloats of C: see
        // kAGroupFloats. One k block: the whole item at once.
        const int64_t mc_tiles = ceil_div(mc, MR) * MR;
        const int64_t group = k <= kb ? k : std::max<int64_t>(1, kAGroupFloats / (mc_tiles * kb)) * kb;
        const int64_t chunks = sweep != Sweep::kDefault ? jp1 - jp0
                               : k <= kb                ? 1
                                                        : ceil_div((jp1 - jp0) * mc_tiles * NR, kCChunkFloats);
        const int64_t chunk = ceil_div(jp1 - jp0, chunks);
        for (int64_t pg = 0; pg < k; pg += group) {
            const int64_t pg_end = std::min(k, pg + group);
            pack_a_group(a, lda, trans_a, i0, mc, pg, pg_end, kb, a_packed);
            for (int64_t q = 0; q < chunks; ++q) {
                const int64_t c0 = jp0 + (sweep == Sweep::kBackward ? chunks - 1 - q : q) * chunk;
                const int64_t c1 = std::min(jp1, c0 + chunk);
                for (int64_t pc = pg; pc < pg_end; pc += kb) {
                    const int64_t kc = std::min(kb, k - pc);
                    int64_t first_panel = 0;  // of this target, in the joint numbering
                    for (const ProductTarget* t = targets; t != targets + count; ++t) {
                        const int64_t panels = ceil_div(t->b.n(), NR);
                        const int64_t begin = std::max(c0, first_panel), end = std::min(c1, first_panel + panels);
                        if (begin < end)
                            compute_block(mc, kc, a_packed + (pc - pg) * mc_tiles, t->b, pc, begin - first_panel,
                                          end - first_panel, t->c + i0 * t->ldc, t->ldc, pc > 0 || beta != 0.0f,
                                          false, 0, row_invariant);
                        first_panel += panels;
                    }
                }
            }
        }
    }
}

// Shapes with nothing to multiply: C = beta C. True when handled.
bool degenerate_product(int64_t m, int64_t n, int64_t k, float beta, float* c, int64_t ldc) {
    if (beta != 0.0f && beta != 1.0f) throw std::invalid_argument("sgemm: beta must be 0 or 1");
    if (m <= 0 || n <= 0) return true;
    if (k > 0) return false;
    if (beta == 0.0f)
        for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return true;
}

}  // namespace

void sgemm_packed(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                  float beta, float* c, int64_t ldc) {
    sgemm_packed_shared_a(trans_a, m, a, lda, {{b, c, ldc}}, beta);
}

namespace {

void shared_a_product(bool trans_a, int64_t m, const float* a, int64_t lda,
                      std::initializer_list<ProductTarget> targets, float beta, bool row_invariant) {
    if (targets.size() == 0) return;
    const int64_t k = targets.begin()->b.k();
    int64_t panels = 0;
    bool work = false;
    for (const ProductTarget& t : targets) {
        if (t.b.k() != k) throw std::invalid_argument("sgemm_packed_shared_a: every B needs the same K");
        work |= !degenerate_product(m, t.b.n(), k, beta, t.c, t.ldc);
        panels += ceil_div(t.b.n(), NR);
    }
    if (!work) return;
    const int threads = (m * panels * NR * k < kParallelMinWork) ? 1 : max_threads();
    const GemmItems items(m, panels * NR, threads, /*shared_as_they_come=*/true);
#pragma omp parallel for if (threads > 1 && items.count > 1) schedule(dynamic)
    for (int64_t item = 0; item < items.count; ++item)
        run_items(items, item, item + 1, trans_a, m, a, lda, targets.begin(), int64_t(targets.size()), beta,
                  row_invariant);
}

}  // namespace

void sgemm_packed_shared_a(bool trans_a, int64_t m, const float* a, int64_t lda,
                           std::initializer_list<ProductTarget> targets, float beta) {
    shared_a_product(trans_a, m, a, lda, targets, beta, /*row_invariant=*/false);
}

void sgemm_packed_row_invariant(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                                float beta, float* c, int64_t ldc) {
    shared_a_product(trans_a, m, a, lda, {{b, c, ldc}}, beta, /*row_invariant=*/true);
}

void sgemm_packed_team_share(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                             float beta, float* c, int64_t ldc, bool row_invariant) {
    if (m <= 0 || b.n() <= 0 || b.k() <= 0) {
        if (thread_id() == 0) degenerate_product(m, b.n(), b.k(), beta, c, ldc);
        return;
    }
    // A fixed share per thread: the LSTM's per-step products are small and synchronised
    // every step, where taking items as they come measured slower.
    const int64_t team = num_threads_in_region(), id = thread_id();
    const GemmItems items(m, b.n(), int(team), /*shared_as_they_come=*/false);
    const ProductTarget target{b, c, ldc};
    run_items(items, id * items.count / team, (id + 1) * items.count / team, trans_a, m, a, lda, &target, 1, beta,
              row_invariant);
}

void sgemm_packed_one_thread(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                             float beta, float* c, int64_t ldc, bool row_invariant) {
    if (degenerate_product(m, b.n(), b.k(), beta, c, ldc)) return;
    const GemmItems items(m, b.n(), 1, /*shared_as_they_come=*/false);
    const ProductTarget target{b, c, ldc};
    run_items(items, 0, items.count, trans_a, m, a, lda, &target, 1, beta, row_invariant);
}

void sgemm_packed_one_thread_sweep(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b, float beta,
                                   float* c, int64_t ldc, bool backward) {
    if (degenerate_product(m, b.n(), b.k(), beta, c, ldc)) return;
    const GemmItems items(m, b.n(), 1, /*shared_as_they_come=*/false);
    const ProductTarget target{b, c, ldc};
    run_items(items, 0, items.count, trans_a, m, a, lda, &target, 1, beta, /*row_invariant=*/false,
              backward ? Sweep::kBackward : Sweep::kForward);
}

int64_t sgemm_k_block(int64_t m, int64_t k) { return k_block(m, k); }

void sgemm_packed_row_block(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                            int64_t j_begin, int64_t j_end, int64_t column_block, const BlockConsumer& consume) {
    if (column_block <= 0 || column_block % NR != 0 || j_begin % NR != 0)
        throw std::invalid_argument("sgemm_packed_row_block: column blocks must start at multiples of the panel width");
    const int64_t k = b.k(), kb = k_block(m, k), m_tiles = ceil_div(m, MR) * MR;
    j_end = std::min(j_end, b.n());
    if (m <= 0 || j_begin >= j_end || k <= 0) return;
    // op(A) packed once for every k block (block pc at offset pc * m_tiles), then reused by
    // every column block: the caller's A rows are read once however many columns there are.
    static thread_local std::vector<float> a_buffer, c_buffer;
    float* a_packed = thread_buffer(a_buffer, m_tiles * k);
    for (int64_t pc = 0; pc < k; pc += kb)
        pack_a(a, lda, trans_a, 0, m, pc, std::min(kb, k - pc), a_packed + pc * m_tiles);
    float* c = thread_buffer(c_buffer, m_tiles * column_block);
    for (int64_t j0 = j_begin; j0 < j_end; j0 += column_block) {
        const int64_t n = std::min(column_block, j_end - j0), jp0 = j0 / NR, jp1 = ceil_div(j0 + n, NR);
        for (int64_t pc = 0; pc < k; pc += kb)
            compute_block(m, std::min(kb, k - pc), a_packed + pc * m_tiles, b, pc, jp0, jp1, c, column_block,
                          pc > 0, /*whole_tiles=*/true, /*c_panel0=*/jp0);
        consume(j0, n, c, column_block);
    }
}

float sgemm_packed_row_block_element(int64_t m, const float* a_row, const float* b_column, int64_t k) {
    // Every tile of sgemm_packed_row_block is a full one (whole_tiles), its k range cut by
    // k_block: each block's chain from zero, added to the sum of the earlier blocks.
    const int64_t kb = k_block(m, k);
    float c = 0.0f;
    for (int64_t pc = 0; pc < k; pc += kb) {
        const float part = tile_element(std::min(kb, k - pc), a_row + pc, b_column + pc);
        c = pc == 0 ? part : part + c;
    }
    return c;
}

namespace {

// Items [first, last) of sgemm_b_in_place's product C = op(A) B + beta C (beta 0 or 1).
void b_in_place_items(const GemmItems& items, int64_t first, int64_t last, bool trans_a, int64_t m, int64_t n,
                      int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                      int64_t ldc) {
    const int64_t kb = k_block(m, k);
    for (int64_t item = first; item < last; ++item) {
        const auto [i0, mc, jp0, jp1] = items.block(item, m);
        float* a_packed = thread_a_buffer();
        for (int64_t pc = 0; pc < k; pc += kb) {
            const int64_t kc = std::min(kb, k - pc);
            pack_a(a, lda, trans_a, i0, mc, pc, kc, a_packed);
            for (int64_t jp = jp0; jp < jp1; ++jp) {
                const int64_t nr = std::min(NR, n - jp * NR);
                const float* b_block = b + pc * ldb + jp * NR;
                for (int64_t ip = 0; ip < mc; ip += MR)
                    micro_kernel_rows_b_in_place(std::min(MR, mc - ip), nr, kc, a_packed + ip * kc, b_block, ldb,
                                                 c + (i0 + ip) * ldc + jp * NR, ldc, pc > 0 || beta != 0.0f);
            }
        }
    }
}

}  // namespace

void sgemm_b_in_place(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                      float* c, int64_t ldc) {
    if constexpr (!kBInPlace) return sgemm(false, false, m, n, k, a, lda, b, ldb, 0.0f, c, ldc);
    if (degenerate_product(m, n, k, 0.0f, c, ldc)) return;
    // sgemm_packed's items, k blocks and packing of A, so that C is bit-equal to it.
    const int64_t panels = ceil_div(n, NR);
    const int threads = (m * panels * NR * k < kParallelMinWork) ? 1 : max_threads();
    const GemmItems items(m, panels * NR, threads, /*shared_as_they_come=*/true);
#pragma omp parallel for if (threads > 1 && items.count > 1) schedule(dynamic)
    for (int64_t item = 0; item < items.count; ++item)
        b_in_place_items(items, item, item + 1, false, m, n, k, a, lda, b, ldb, 0.0f, c, ldc);
}

void sgemm_b_in_place_one_thread(bool trans_a, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
    if constexpr (!kBInPlace)
        return sgemm_packed_one_thread(trans_a, m, a, lda, PackedB(b, ldb, false, k, n), beta, c, ldc);
    if (degenerate_product(m, n, k, beta, c, ldc)) return;
    const GemmItems items(m, ceil_div(n, NR) * NR, 1, /*shared_as_they_come=*/false);
    b_in_place_items(items, 0, items.count, trans_a, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    sgemm_packed(trans_a, m, a, lda, PackedB(b, ldb, trans_b, k, n), beta, c, ldc);
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
