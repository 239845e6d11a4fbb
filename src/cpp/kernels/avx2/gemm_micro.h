// The AVX2 + FMA gemm microkernel: a 6 x 16 tile (12 ymm accumulators), and the pack of
// A by 6 x 8 register transposes.
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
//   micro_kernel_edge<R>(nr, ...)  the same for the first nr < NR columns of the b-panel
//                          (an edge panel, zero-padded to NR), writing only those of c
//                          (here kernels/reference/gemm_edge.h's, through a buffer);
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

#include "isa.h"
#include "kernels/avx2/transpose.h"

namespace fastlm {
namespace FASTLM_ISA {

constexpr int64_t MR = 6, NR = 16;

// Rows from which a tile runs the full tile's single k-chain (see micro_kernel_one_chain).
constexpr int64_t kOneChainRows = 4;

// GCC 12 folds a B vector that R FMAs use into each of them as a memory operand: R loads
// of the same 32 bytes per k step, which with the broadcasts of A make the edge-tile
// kernels (R = 2..5) load-bound instead of FMA-bound. The empty asm "changes" the
// registers, so the compiler loads each vector once. (The AVX-512 kernel keeps them
// without help.)
inline void keep_in_registers(__m256& b0, __m256& b1) { __asm__("" : "+x"(b0), "+x"(b1)); }

template <int R>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* __restrict c, int64_t ldc, bool accumulate, const float* l2_next,
                         int64_t l2_lines) {
    // The next B panel's lines all before the tile (this kernel's k loop is assembly).
    for (int64_t l = 0; l < l2_lines; ++l) _mm_prefetch(reinterpret_cast<const char*>(l2_next + 16 * l), _MM_HINT_T1);
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) {
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        // The C tile is read or written after the k loop: fetch its lines now, so that
        // the misses overlap with the FMAs instead of stalling at the end.
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + NR - 1), _MM_HINT_T0);
    }
    int64_t p = 0;
    if constexpr (R == MR) {
        // The full tile needs 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm
        // registers. GCC 12 runs out when the k loop is unrolled (it re-loads B inside
        // every FMA and shuffles registers, far below the FMA rate), so the unrolled loop
        // is written out: four k steps per iteration, B loaded once per step into
        // ymm13/14, the broadcast of A in ymm15.
        const int64_t quads = kc / 4;
        if (quads > 0) {
            const float* const a_end = a + quads * 4 * MR;
#define FASTLM_K_STEP(AO, BO)                                                                  \
    "vmovups " #BO "(%[b]), %%ymm13\n\t"                                                        \
    "vmovups " #BO "+32(%[b]), %%ymm14\n\t"                                                     \
    "vbroadcastss " #AO "(%[a]), %%ymm15\n\t"                                                    \
    "vfmadd231ps %%ymm13, %%ymm15, %[c00]\n\tvfmadd231ps %%ymm14, %%ymm15, %[c01]\n\t"                \
    "vbroadcastss " #AO "+4(%[a]), %%ymm15\n\t"                                                  \
    "vfmadd231ps %%ymm13, %%ymm15, %[c10]\n\tvfmadd231ps %%ymm14, %%ymm15, %[c11]\n\t"                \
    "vbroadcastss " #AO "+8(%[a]), %%ymm15\n\t"                                                  \
    "vfmadd231ps %%ymm13, %%ymm15, %[c20]\n\tvfmadd231ps %%ymm14, %%ymm15, %[c21]\n\t"                \
    "vbroadcastss " #AO "+12(%[a]), %%ymm15\n\t"                                                 \
    "vfmadd231ps %%ymm13, %%ymm15, %[c30]\n\tvfmadd231ps %%ymm14, %%ymm15, %[c31]\n\t"                \
    "vbroadcastss " #AO "+16(%[a]), %%ymm15\n\t"                                                 \
    "vfmadd231ps %%ymm13, %%ymm15, %[c40]\n\tvfmadd231ps %%ymm14, %%ymm15, %[c41]\n\t"                \
    "vbroadcastss " #AO "+20(%[a]), %%ymm15\n\t"                                                 \
    "vfmadd231ps %%ymm13, %%ymm15, %[c50]\n\tvfmadd231ps %%ymm14, %%ymm15, %[c51]\n\t"
            __asm__(
                "1:\n\t"
                FASTLM_K_STEP(0, 0) FASTLM_K_STEP(24, 64) FASTLM_K_STEP(48, 128) FASTLM_K_STEP(72, 192)
                "add $96, %[a]\n\t"
                "add $256, %[b]\n\t"
                "cmp %[a_end], %[a]\n\t"
                "jne 1b\n\t"
                : [a] "+r"(a), [b] "+r"(b),
                  [c00] "+x"(acc[0][0]), [c01] "+x"(acc[0][1]), [c10] "+x"(acc[1][0]), [c11] "+x"(acc[1][1]),
                  [c20] "+x"(acc[2][0]), [c21] "+x"(acc[2][1]), [c30] "+x"(acc[3][0]), [c31] "+x"(acc[3][1]),
                  [c40] "+x"(acc[4][0]), [c41] "+x"(acc[4][1]), [c50] "+x"(acc[5][0]), [c51] "+x"(acc[5][1])
                : [a_end] "r"(a_end)
                : "xmm13", "xmm14", "xmm15", "cc", "memory");
#undef FASTLM_K_STEP
            p = quads * 4;
        }
    } else {
        // Few rows (edge tiles, the batch-of-one products of generation) have too few
        // accumulators to cover the FMA latency (4 cycles, 2 units: 8 in flight):
        // independent chains over alternate k steps, added at the end.
        constexpr int kChains = R >= 4 ? 1 : (R == 1 ? 4 : 2);
        if constexpr (kChains > 1) {
            __m256 extra[kChains - 1][R][2];
            for (int h = 0; h < kChains - 1; ++h)
                for (int r = 0; r < R; ++r) extra[h][r][0] = extra[h][r][1] = _mm256_setzero_ps();
            for (; p + kChains <= kc; p += kChains) {
#pragma GCC unroll 4
                for (int h = 0; h < kChains; ++h) {
                    __m256 b0 = _mm256_loadu_ps(b + h * NR), b1 = _mm256_loadu_ps(b + h * NR + 8);
                    keep_in_registers(b0, b1);
#pragma GCC unroll 3
                    for (int r = 0; r < R; ++r) {
                        const __m256 ar = _mm256_broadcast_ss(a + h * MR + r);
                        __m256* chain = h == 0 ? acc[r] : extra[h - 1][r];
                        chain[0] = _mm256_fmadd_ps(ar, b0, chain[0]);
                        chain[1] = _mm256_fmadd_ps(ar, b1, chain[1]);
                    }
                }
                a += kChains * MR;
                b += kChains * NR;
            }
            for (int h = 0; h < kChains - 1; ++h)
                for (int r = 0; r < R; ++r) {
                    acc[r][0] = _mm256_add_ps(acc[r][0], extra[h][r][0]);
                    acc[r][1] = _mm256_add_ps(acc[r][1], extra[h][r][1]);
                }
        }
    }
    for (; p < kc; ++p) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        keep_in_registers(b0, b1);
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
            const __m256 ar = _mm256_broadcast_ss(a + r);
            acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
        }
        a += MR;
        b += NR;
    }
    for (int r = 0; r < R; ++r) {
        float* cr = c + r * ldc;
        if (accumulate) {
            acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_loadu_ps(cr));
            acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_loadu_ps(cr + 8));
        }
        _mm256_storeu_ps(cr, acc[r][0]);
        _mm256_storeu_ps(cr + 8, acc[r][1]);
    }
}

// One to three rows with the full tile's arithmetic (one chain per element; micro_kernel<R>
// runs two or four, since so few rows' accumulators cannot cover the FMA latency): the
// rows across several panels at once, so that 8 or more chains are in flight. A
// row-invariant product's edge tile of one to three rows (scoring's recurrence at the steps
// where so few sequences still run, evaluate's single stream).
template <int R>
constexpr int kOneChainPanels = R == 1 ? 4 : 2;

template <int R>
inline void micro_kernel_one_chain(int64_t kc, const float* __restrict a, const float* __restrict b,
                                   int64_t panel_stride, float* __restrict c, int64_t ldc, bool accumulate) {
    static_assert(R >= 1 && R < kOneChainRows);
    constexpr int P = kOneChainPanels<R>;
    __m256 acc[R][P][2];
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < P; ++q) acc[r][q][0] = acc[r][q][1] = _mm256_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
#pragma GCC unroll 4
        for (int q = 0; q < P; ++q) {
            const float* bq = b + q * panel_stride + p * NR;
            __m256 b0 = _mm256_loadu_ps(bq), b1 = _mm256_loadu_ps(bq + 8);
            keep_in_registers(b0, b1);
            for (int r = 0; r < R; ++r) {
                const __m256 ar = _mm256_broadcast_ss(a + p * MR + r);
                acc[r][q][0] = _mm256_fmadd_ps(ar, b0, acc[r][q][0]);
                acc[r][q][1] = _mm256_fmadd_ps(ar, b1, acc[r][q][1]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < P; ++q)
            for (int v = 0; v < 2; ++v) {
                float* cr = c + r * ldc + q * NR + 8 * v;
                __m256 cv = acc[r][q][v];
                if (accumulate) cv = _mm256_add_ps(cv, _mm256_loadu_ps(cr));
                _mm256_storeu_ps(cr, cv);
            }
}

// Eight k steps of six full rows of a row-major op(A) into the panel (k-major, six floats
// per k): a 6 x 8 transpose in registers, instead of a load, a store and an edge test per
// float (the output layer's dh product packs all of dlogits, K = V, this way).
inline void pack_a_rows6_k8(const float* const rows[6], int64_t p, float* dst) {
    const __m256 r0 = _mm256_loadu_ps(rows[0] + p), r1 = _mm256_loadu_ps(rows[1] + p);
    const __m256 r2 = _mm256_loadu_ps(rows[2] + p), r3 = _mm256_loadu_ps(rows[3] + p);
    const __m256 r4 = _mm256_loadu_ps(rows[4] + p), r5 = _mm256_loadu_ps(rows[5] + p);
    // Pairs of rows interleaved: lo01 = (r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5]).
    const __m256 lo01 = _mm256_unpacklo_ps(r0, r1), hi01 = _mm256_unpackhi_ps(r0, r1);
    const __m256 lo23 = _mm256_unpacklo_ps(r2, r3), hi23 = _mm256_unpackhi_ps(r2, r3);
    const __m256 lo45 = _mm256_unpacklo_ps(r4, r5), hi45 = _mm256_unpackhi_ps(r4, r5);
    // Rows 0-3 of one k per 128-bit half: k0 | k4, k1 | k5, k2 | k6, k3 | k7.
    const __m256 k04 = _mm256_shuffle_ps(lo01, lo23, 0x44), k15 = _mm256_shuffle_ps(lo01, lo23, 0xEE);
    const __m256 k26 = _mm256_shuffle_ps(hi01, hi23, 0x44), k37 = _mm256_shuffle_ps(hi01, hi23, 0xEE);
    const __m128 tail_lo45 = _mm256_castps256_ps128(lo45), tail_hi45 = _mm256_castps256_ps128(hi45);
    const __m128 tail_lo45_up = _mm256_extractf128_ps(lo45, 1), tail_hi45_up = _mm256_extractf128_ps(hi45, 1);
    auto put = [dst](int k, __m128 rows0to3, __m128 rows45, bool high_pair) {
        _mm_storeu_ps(dst + 6 * k, rows0to3);
        if (high_pair)
            _mm_storeh_pi(reinterpret_cast<__m64*>(dst + 6 * k + 4), rows45);
        else
            _mm_storel_pi(reinterpret_cast<__m64*>(dst + 6 * k + 4), rows45);
    };
    put(0, _mm256_castps256_ps128(k04), tail_lo45, false);
    put(1, _mm256_castps256_ps128(k15), tail_lo45, true);
    put(2, _mm256_castps256_ps128(k26), tail_hi45, false);
    put(3, _mm256_castps256_ps128(k37), tail_hi45, true);
    put(4, _mm256_extractf128_ps(k04, 1), tail_lo45_up, false);
    put(5, _mm256_extractf128_ps(k15, 1), tail_lo45_up, true);
    put(6, _mm256_extractf128_ps(k26, 1), tail_hi45_up, false);
    put(7, _mm256_extractf128_ps(k37, 1), tail_hi45_up, true);
}

inline int64_t pack_a_rows(const float* const rows[MR], int64_t kc, float* panel) {
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) pack_a_rows6_k8(rows, p, panel + p * MR);
    return p;
}

// One element of a full tile (R = MR) as micro_kernel computes it: a single chain of
// multiply-adds in the order of k, from zero. The frame computes a lone product element
// with it, bit-equal to the tile's (sgemm_packed_row_block_element).
inline float tile_element(int64_t kc, const float* a, const float* b) {
    float acc = 0.0f;
    for (int64_t p = 0; p < kc; ++p) acc = std::fma(a[p], b[p], acc);
    return acc;
}

// The first k steps of a B panel from NR column streams (cols[j][p] = op(B)(p, j0 + j), a
// transposed B such as the decoder's W^T for the logits) into panel (k x NR); returns how
// many it packed (transpose_columns_k8).
inline int64_t pack_b_columns(const float* const cols[NR], int64_t k, float* panel) {
    return transpose_columns_k8<NR>(cols, k, panel);
}

}  // namespace FASTLM_ISA
}  // namespace fastlm

#include "kernels/reference/gemm_edge.h"
