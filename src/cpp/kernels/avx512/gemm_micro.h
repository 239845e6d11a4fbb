// The AVX-512 gemm microkernel: an 8 x 32 tile, two zmm accumulators per row.
// The interface of every gemm microkernel family (gemm.cpp's frame calls these):
//   MR x NR                the register tile;
//   micro_kernel<R>(kc, a, b, c, ldc, accumulate, l2_next, l2_lines)  c[R x NR] (row
//                          stride ldc) = a-panel (kc x MR, k-major) times b-panel (kc x NR)
//                          [+ c if accumulate], for R <= MR rows; and l2_lines cache lines
//                          from l2_next requested into L2 (the frame's prefetch of the next
//                          B panel), when and how the family finds cheapest;
//   kOneChainRows          the fewest rows R whose micro_kernel<R> computes each element
//                          as the full tile does (one chain of multiply-adds from zero in
//                          the order of k, then + c): the frame's row-invariant products;
//   micro_kernel_one_chain<R>(kc, a, b, panel_stride, c, ldc, accumulate)  for R <
//                          kOneChainRows: R rows of kOneChainPanels<R> full panels (panel q
//                          at b + q * panel_stride) with the full tile's arithmetic;
//   kTallTile              whether the family has micro_kernel_tall<E>(nr, kc, a, a_edge,
//                          b, c, ldc, accumulate): a full tile and E < kOneChainRows rows
//                          after it in one pass, each row with the full tile's arithmetic
//                          (only this family so far; the others run two tiles);
//   micro_kernel_edge<R>(nr, ...)  the same for the first nr < NR columns of the b-panel
//                          (an edge panel, zero-padded to NR), writing only those of c;
//   kBInPlace              whether the family has micro_kernel_b_in_place<R>(nr, kc, a,
//                          b, ldb, c, ldc, accumulate): the tile with B read unpacked
//                          from a row-major matrix (only this family so far);
//   pack_a_rows(rows, kc, panel)  packs the first k steps of MR rows of op(A) into the
//                          panel (kc x MR) and returns how many it packed; the frame
//                          copies the rest element by element;
//   tile_element(kc, a, b) one element of a full tile from its row of A and column of
//                          B (kc floats each, contiguous), with the tile's arithmetic;
//   pack_b_columns(cols, k, panel)  the same for a full panel of a transposed B, from its
//                          NR column streams (0 where the family has no such pack).
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "isa.h"
#include "kernels/avx2/transpose.h"

namespace fastlm {
namespace FASTLM_ISA {

constexpr int64_t MR = 8, NR = 32;

// Rows from which a tile runs the full tile's single k-chain (see micro_kernel_one_chain).
constexpr int64_t kOneChainRows = 3;

// B read where it lies (micro_kernel_b_in_place): the products whose B is a row-major
// matrix (the output layer's dh = dlogits W) need not pack it.
constexpr bool kBInPlace = true;

// The two vector widths of the family's kernels: 16-lane zmm, and 8-lane ymm for an edge
// panel of at most 8 columns (the output layer's dh and dW and the LSTM's gradient
// products at H = 200 = 6 x 32 + 8), where a masked zmm would leave half its lanes idle.
// Zen 4 runs two ymm FMAs per cycle and one zmm, so 8 columns take half the time as ymm.
// Each lane's chain of FMAs is the same whatever the width: the same bits.
struct Lanes16 {
    using Vec = __m512;
    using Mask = __mmask16;
    static constexpr int kWidth = 16;
    static Vec zero() { return _mm512_setzero_ps(); }
    static Vec load(const float* p) { return _mm512_loadu_ps(p); }
    static Vec load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
    static Vec broadcast(float x) { return _mm512_set1_ps(x); }
    static Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
    static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
    static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
    static void store(Mask m, float* p, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
};

struct Lanes8 {
    using Vec = __m256;
    using Mask = __mmask8;
    static constexpr int kWidth = 8;
    static Vec zero() { return _mm256_setzero_ps(); }
    static Vec load(const float* p) { return _mm256_loadu_ps(p); }
    static Vec load(Mask m, const float* p) { return _mm256_maskz_loadu_ps(m, p); }
    static Vec broadcast(float x) { return _mm256_set1_ps(x); }
    static Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
    static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
    static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
    static void store(Mask m, float* p, Vec v) { _mm256_mask_storeu_ps(p, m, v); }
};

// The mask of an edge panel's last vector: its first `columns` lanes.
template <class L>
inline typename L::Mask first_lanes(int64_t columns) {
    return typename L::Mask((1u << columns) - 1);
}

// The vectors that cover an edge panel's nr < NR columns, handed to run(lanes, vecs, mask):
// up to 8 columns one ymm, up to 16 one zmm, else a full zmm and a masked one; mask holds
// the last vector's lanes. Every kernel's edge takes its width from here. It and the
// callers' lambdas are forced inline: left to GCC's own inlining choices, the whole output
// layer ran slower.
template <class Run>
__attribute__((always_inline)) inline void with_edge_vectors(int64_t nr, const Run& run) {
    using One = std::integral_constant<int, 1>;
    using Two = std::integral_constant<int, 2>;
    if (nr <= 8)
        run(Lanes8{}, One{}, first_lanes<Lanes8>(nr));
    else if (nr <= 16)
        run(Lanes16{}, One{}, first_lanes<Lanes16>(nr));
    else
        run(Lanes16{}, Two{}, first_lanes<Lanes16>(nr - 16));
}

// One vector of a C row from its accumulator: + c when accumulating, then stored;
// masked, only the lanes of mask are read and written (an edge panel's columns).
template <class L>
inline void store_c_vector(float* c, typename L::Vec sum, bool masked, typename L::Mask mask, bool accumulate) {
    if (masked) {
        if (accumulate) sum = L::add(sum, L::load(mask, c));
        L::store(mask, c, sum);
    } else {
        if (accumulate) sum = L::add(sum, L::load(c));
        L::store(c, sum);
    }
}

// R <= MR rows of the tile and kVecs vectors of L's width (two 16-column vectors make a
// full tile); the a-panel keeps its MR stride, B rows are ldb apart (NR in a packed
// panel). Few rows leave the FMA latency exposed, so R <= 2 (matrix-vector products in
// generation) runs two independent k-chains. kMasked: the last vector loads B and stores
// C only in the lanes of last_mask (an edge panel's columns). Every element of C is the
// same chain of FMAs whatever L, kVecs, the mask and ldb are, so an edge tile is bit-equal
// to the same columns of a full one, and a product with B in place to the same product
// with B packed.
// l2_next, l2_lines: cache lines the frame wants in L2 for a later tile (the next B
// panel), requested one per eight k steps rather than all at once before the tile: a
// burst of them filled the core's line fill buffers with misses to L3 and memory, and the
// tile's own loads of A from L2 waited behind them.
template <int R, int kVecs, bool kMasked, class L = Lanes16>
inline void micro_kernel_vectors(int64_t kc, const float* __restrict a, const float* __restrict b, int64_t ldb,
                                 float* __restrict c, int64_t ldc, bool accumulate, typename L::Mask last_mask,
                                 const float* l2_next = nullptr, int64_t l2_lines = 0) {
    constexpr int kChains = R <= 2 ? 2 : 1, W = L::kWidth;
    typename L::Vec acc[kChains][R][kVecs];
    for (int h = 0; h < kChains; ++h)
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < kVecs; ++v) acc[h][r][v] = L::zero();
    // The C tile is read or written after the k loop: fetch its lines now, so that the
    // misses overlap with the FMAs (the output layer's C, dlogits and dW, are megabytes).
    for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + W * kVecs - 1), _MM_HINT_T0);
    }
    // One k step of chain h: B's row (kVecs vectors) times R broadcasts of A. (Not inlined,
    // the accumulators would live in memory.)
    const auto k_step = [&](int h, const float* ap, const float* bp) __attribute__((always_inline)) {
        typename L::Vec bv[kVecs];
        for (int v = 0; v < kVecs; ++v)
            bv[v] = kMasked && v == kVecs - 1 ? L::load(last_mask, bp + W * v) : L::load(bp + W * v);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const typename L::Vec ar = L::broadcast(ap[r]);
            for (int v = 0; v < kVecs; ++v) acc[h][r][v] = L::fmadd(ar, bv[v], acc[h][r][v]);
        }
    };
    int64_t p = 0;
    if constexpr (kChains == 1) {
        // Eight k steps per iteration: GCC's loop of one step per iteration spends a counter
        // and two pointer updates on every 16 FMAs, which held back the products without a
        // prefetch (B in place, transposed A); bench/PROFILES.md (gemm) has the figures.
        for (; p + 8 <= kc; p += 8) {
            if (l2_lines > 0) {
                _mm_prefetch(reinterpret_cast<const char*>(l2_next), _MM_HINT_T1);
                l2_next += 16;
                --l2_lines;
            }
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) k_step(0, a + i * MR, b + i * ldb);
            a += 8 * MR;
            b += 8 * ldb;
        }
    }
    for (; p + kChains <= kc; p += kChains) {
#pragma GCC unroll 2
        for (int h = 0; h < kChains; ++h) k_step(h, a + h * MR, b + h * ldb);
        a += kChains * MR;
        b += kChains * ldb;
    }
    for (; p < kc; ++p) {  // odd kc with two chains
        k_step(0, a, b);
        a += MR;
        b += ldb;
    }
    for (; l2_lines > 0; --l2_lines, l2_next += 16) _mm_prefetch(reinterpret_cast<const char*>(l2_next), _MM_HINT_T1);
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < kVecs; ++v) {
            typename L::Vec cv = acc[0][r][v];
            if (kChains == 2) cv = L::add(cv, acc[kChains - 1][r][v]);
            store_c_vector<L>(c + r * ldc + W * v, cv, kMasked && v == kVecs - 1, last_mask, accumulate);
        }
}

// micro_kernel<R>(kc, a, b, c, ldc, accumulate, l2_next, l2_lines): the full panel's R
// rows, requesting l2_lines lines from l2_next into L2 along the way (see above).
template <int R>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* __restrict c, int64_t ldc, bool accumulate, const float* l2_next,
                         int64_t l2_lines) {
    micro_kernel_vectors<R, 2, false>(kc, a, b, NR, c, ldc, accumulate, 0xFFFF, l2_next, l2_lines);
}

// The edge panel's nr < NR columns, stored straight into C with masks; up to 16 columns
// with one vector per row, up to 8 with one ymm, so that the padding is not computed
// (H = 200 = 6 x 32 + 8: the output layer's dh and dW products computed 224 columns for
// 200 before).
template <int R>
inline void micro_kernel_edge(int64_t nr, int64_t kc, const float* __restrict a, const float* __restrict b,
                              float* __restrict c, int64_t ldc, bool accumulate) {
    with_edge_vectors(nr, [&](auto lanes, auto vecs, auto mask) __attribute__((always_inline)) {
        micro_kernel_vectors<R, vecs, true, decltype(lanes)>(kc, a, b, NR, c, ldc, accumulate, mask);
    });
}

// The tile with B read in place: b points at B(k0, j0), rows ldb apart, nr <= NR columns
// (an edge panel's loads are masked, so nothing past B's columns is read).
template <int R>
inline void micro_kernel_b_in_place(int64_t nr, int64_t kc, const float* __restrict a, const float* __restrict b,
                                    int64_t ldb, float* __restrict c, int64_t ldc, bool accumulate) {
    if (nr == NR)
        return micro_kernel_vectors<R, 2, false>(kc, a, b, ldb, c, ldc, accumulate, 0xFFFF);
    with_edge_vectors(nr, [&](auto lanes, auto vecs, auto mask) __attribute__((always_inline)) {
        micro_kernel_vectors<R, vecs, true, decltype(lanes)>(kc, a, b, ldb, c, ldc, accumulate, mask);
    });
}

// One or two rows with the full tile's arithmetic (one chain per element; micro_kernel<R>
// runs two, since one row's two accumulators cannot cover the FMA latency): the rows
// across several panels at once, so that 8 chains are in flight, as in a full tile of one
// panel. A row-invariant product's edge tile of a row or two (scoring's recurrence at the
// steps where one or two sequences still run, evaluate's single stream) runs at least as
// fast as micro_kernel<R> does on its panels one at a time.
template <int R>
constexpr int kOneChainPanels = R == 1 ? 4 : 2;

template <int R>
inline void micro_kernel_one_chain(int64_t kc, const float* __restrict a, const float* __restrict b,
                                   int64_t panel_stride, float* __restrict c, int64_t ldc, bool accumulate) {
    static_assert(R >= 1 && R < kOneChainRows);
    constexpr int P = kOneChainPanels<R>;
    __m512 acc[R][P][2];
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < P; ++q) acc[r][q][0] = acc[r][q][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
        __m512 ar[R];
        for (int r = 0; r < R; ++r) ar[r] = _mm512_set1_ps(a[p * MR + r]);
#pragma GCC unroll 4
        for (int q = 0; q < P; ++q) {
            const float* bq = b + q * panel_stride + p * NR;
            const __m512 b0 = _mm512_loadu_ps(bq), b1 = _mm512_loadu_ps(bq + 16);
            for (int r = 0; r < R; ++r) {
                acc[r][q][0] = _mm512_fmadd_ps(ar[r], b0, acc[r][q][0]);
                acc[r][q][1] = _mm512_fmadd_ps(ar[r], b1, acc[r][q][1]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < P; ++q)
            for (int v = 0; v < 2; ++v) {
                float* cr = c + r * ldc + q * NR + 16 * v;
                __m512 cv = acc[r][q][v];
                if (accumulate) cv = _mm512_add_ps(cv, _mm512_loadu_ps(cr));
                _mm512_storeu_ps(cr, cv);
            }
}

// A full tile and the E < kOneChainRows rows after it in one pass over the b-panel: a
// row-invariant product of MR + E rows (zaremba-small's per-step LSTM products, B = 20
// as 10 + 10 rows per thread) otherwise streams each panel from L2 twice, the second time
// for E rows by micro_kernel_one_chain at a third of the tile's FMAs per load. Every
// element is the full tile's one chain (from zero in the order of k, then + c), so the
// rows are bit-equal to micro_kernel<MR> and micro_kernel_one_chain<E>. a: the tile's
// a-panel, a_edge: the next (E rows of MR, kc x MR); nr < NR: an edge panel's columns,
// masked as micro_kernel_edge. (8 + 2) x 2 accumulators, 2 B vectors and a broadcast fit
// the 32 registers.
constexpr bool kTallTile = true;

template <int E, int kVecs, bool kMasked, class L = Lanes16>
inline void micro_kernel_tall_vectors(int64_t kc, const float* __restrict a, const float* __restrict a_edge,
                                      const float* __restrict b, float* __restrict c, int64_t ldc, bool accumulate,
                                      typename L::Mask last_mask) {
    constexpr int R = MR + E, W = L::kWidth;
    typename L::Vec acc[R][kVecs];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < kVecs; ++v) acc[r][v] = L::zero();
    const auto k_step = [&](const float* ap, const float* ep, const float* bp) __attribute__((always_inline)) {
        typename L::Vec bv[kVecs];
        for (int v = 0; v < kVecs; ++v)
            bv[v] = kMasked && v == kVecs - 1 ? L::load(last_mask, bp + W * v) : L::load(bp + W * v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const typename L::Vec ar = L::broadcast(r < MR ? ap[r] : ep[r - MR]);
            for (int v = 0; v < kVecs; ++v) acc[r][v] = L::fmadd(ar, bv[v], acc[r][v]);
        }
    };
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) k_step(a + i * MR, a_edge + i * MR, b + i * NR);
        a += 4 * MR;
        a_edge += 4 * MR;
        b += 4 * NR;
    }
    for (; p < kc; ++p) {
        k_step(a, a_edge, b);
        a += MR;
        a_edge += MR;
        b += NR;
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < kVecs; ++v)
            store_c_vector<L>(c + r * ldc + W * v, acc[r][v], kMasked && v == kVecs - 1, last_mask, accumulate);
}

template <int E>
inline void micro_kernel_tall(int64_t nr, int64_t kc, const float* __restrict a, const float* __restrict a_edge,
                              const float* __restrict b, float* __restrict c, int64_t ldc, bool accumulate) {
    static_assert(E >= 1 && E < kOneChainRows);
    if (nr == NR)
        return micro_kernel_tall_vectors<E, 2, false>(kc, a, a_edge, b, c, ldc, accumulate, 0xFFFF);
    with_edge_vectors(nr, [&](auto lanes, auto vecs, auto mask) __attribute__((always_inline)) {
        micro_kernel_tall_vectors<E, vecs, true, decltype(lanes)>(kc, a, a_edge, b, c, ldc, accumulate, mask);
    });
}

inline int64_t pack_a_rows(const float* const* rows, int64_t kc, float* panel) {
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) transpose_rows8_k8<MR>(rows, p, panel + p * MR);
    return p;
}

// The first k steps of a B panel from NR column streams (cols[j][p] = op(B)(p, j0 + j), a
// transposed B such as the decoder's W^T for the logits) into panel (k x NR); returns how
// many it packed (transpose_columns_k8).
inline int64_t pack_b_columns(const float* const cols[NR], int64_t k, float* panel) {
    return transpose_columns_k8<NR>(cols, k, panel);
}

// One element of a full tile (R = MR) as micro_kernel computes it: a single chain of
// multiply-adds in the order of k, from zero. The frame computes a lone product element
// with it, bit-equal to the tile's (sgemm_packed_row_block_element).
inline float tile_element(int64_t kc, const float* a, const float* b) {
    float acc = 0.0f;
    for (int64_t p = 0; p < kc; ++p) acc = std::fma(a[p], b[p], acc);
    return acc;
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
