#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "parallel.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace fastlm {
namespace {

// Register tile MR x NR of the microkernel, and the cache blocking around it:
// a KC x NR panel of B stays in L1, an MC x KC block of A in L2.
#if defined(__AVX512F__)
constexpr int64_t MR = 8, NR = 32;
const char* const kSimdName = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t MR = 6, NR = 16;
const char* const kSimdName = "avx2";
#else
constexpr int64_t MR = 4, NR = 8;
const char* const kSimdName = "scalar";
#endif
constexpr int64_t KC = 256;
constexpr int64_t kMaxSingleKBlock = 2 * KC;  // see k_block
constexpr int64_t MC = MR * 16;

constexpr int64_t kFloatsPerLine = 64 / sizeof(float);  // one cache line

inline void prefetch_l2(const float* p) {
#if defined(__GNUC__)
    __builtin_prefetch(p, 0, 2);
#else
    (void)p;
#endif
}

// ------------------------------------------------------------------ microkernels
// c[MR x NR] (row stride ldc) = a-panel (kc x MR) * b-panel (kc x NR) [+ c if accumulate].

#if defined(__AVX512F__)
// R <= MR rows of the tile; the a-panel keeps its MR stride. Few rows leave the FMA
// latency exposed, so R <= 2 (matrix-vector products in generation) runs two
// independent k-chains.
template <int R>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* __restrict c, int64_t ldc, bool accumulate) {
    constexpr int kChains = R <= 2 ? 2 : 1;
    __m512 acc[kChains][R][2];
    for (int h = 0; h < kChains; ++h)
        for (int r = 0; r < R; ++r) acc[h][r][0] = acc[h][r][1] = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + kChains <= kc; p += kChains) {
#pragma GCC unroll 2
        for (int h = 0; h < kChains; ++h) {
            const __m512 b0 = _mm512_loadu_ps(b + h * NR), b1 = _mm512_loadu_ps(b + h * NR + 16);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const __m512 ar = _mm512_set1_ps(a[h * MR + r]);
                acc[h][r][0] = _mm512_fmadd_ps(ar, b0, acc[h][r][0]);
                acc[h][r][1] = _mm512_fmadd_ps(ar, b1, acc[h][r][1]);
            }
        }
        a += kChains * MR;
        b += kChains * NR;
    }
    for (; p < kc; ++p) {  // odd kc with two chains
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        for (int r = 0; r < R; ++r) {
            const __m512 ar = _mm512_set1_ps(a[r]);
            acc[0][r][0] = _mm512_fmadd_ps(ar, b0, acc[0][r][0]);
            acc[0][r][1] = _mm512_fmadd_ps(ar, b1, acc[0][r][1]);
        }
        a += MR;
        b += NR;
    }
    for (int r = 0; r < R; ++r) {
        float* cr = c + r * ldc;
        __m512 c0 = acc[0][r][0], c1 = acc[0][r][1];
        if (kChains == 2) {
            c0 = _mm512_add_ps(c0, acc[kChains - 1][r][0]);
            c1 = _mm512_add_ps(c1, acc[kChains - 1][r][1]);
        }
        if (accumulate) {
            c0 = _mm512_add_ps(c0, _mm512_loadu_ps(cr));
            c1 = _mm512_add_ps(c1, _mm512_loadu_ps(cr + 16));
        }
        _mm512_storeu_ps(cr, c0);
        _mm512_storeu_ps(cr + 16, c1);
    }
}
#elif defined(__AVX2__) && defined(__FMA__)
static_assert(MR == 6 && NR == 16, "the AVX2 kernel's assembly is written for a 6 x 16 tile");

// GCC 12 folds a B vector that R FMAs use into each of them as a memory operand: R loads
// of the same 32 bytes per k step. With the broadcasts of A that made the edge-tile
// kernels (R = 2..5) load-bound at two loads per cycle: 65% of the FMA peak on Zen 3, in
// L1, against 96-100% with B held in registers. The empty asm "changes" the registers,
// so the compiler loads each vector once. (The AVX-512 build keeps them without help.)
inline void keep_in_registers(__m256& b0, __m256& b1) { __asm__("" : "+x"(b0), "+x"(b1)); }

template <int R>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* __restrict c, int64_t ldc, bool accumulate) {
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
        // every FMA and shuffles registers: about 45% of the FMA peak on Zen 3), so the
        // unrolled loop is written out: four k steps per iteration, B loaded once per step
        // into ymm13/14, the broadcast of A in ymm15.
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
#else
template <int R>
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                         float* __restrict c, int64_t ldc, bool accumulate) {
    float acc[R][NR] = {};
    for (int64_t p = 0; p < kc; ++p) {
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
        a += MR;
        b += NR;
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < NR; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
}
#endif

// The kernel for the first mr rows of a tile: edge tiles and few-row products (a batch
// of one in generation) compute only the rows that exist.
template <int R = MR>
inline void micro_kernel_rows(int64_t mr, int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                              bool accumulate) {
    if constexpr (R > 1) {
        if (mr < R) return micro_kernel_rows<R - 1>(mr, kc, a, b, c, ldc, accumulate);
    }
    micro_kernel<R>(kc, a, b, c, ldc, accumulate);
}

// ------------------------------------------------------------------ packing

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// Eight k steps of six full rows of a row-major op(A) into the panel (k-major, six floats
// per k): a 6 x 8 transpose in registers. The element-by-element copy it replaces ran a
// load, a store and an edge test per float: 2.7% of a B training step's profile samples
// (mostly the output layer's dh product, A = dlogits, K = V), 1.5% now; the rest of the
// pack waits on memory.
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
#endif

// Rows [i0, i0+mc) and columns [k0, k0+kc) of op(A) into MR-row panels, each kc x MR,
// padded past mc so that the microkernel never branches on the edge.
void pack_a(const float* a, int64_t lda, bool trans_a, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            float* dst) {
    for (int64_t ip = 0; ip < mc; ip += MR) {
        const int64_t mr = std::min(MR, mc - ip);
        float* panel = dst + ip * kc;
        if (trans_a) {  // op(A)(i, k) = a[k * lda + i]: MR consecutive floats per k
            const float* src = a + k0 * lda + i0 + ip;
            if (mr == MR) {  // the common case, with a copy of fixed length
                for (int64_t p = 0; p < kc; ++p) std::memcpy(panel + p * MR, src + p * lda, sizeof(float) * MR);
                continue;
            }
            for (int64_t p = 0; p < kc; ++p) {
                std::memcpy(panel + p * MR, src + p * lda, sizeof(float) * mr);
                std::fill(panel + p * MR + mr, panel + (p + 1) * MR, 0.0f);
            }
        } else {  // op(A)(i, k) = a[i * lda + k]: MR row streams, the panel written in order
            // Padding rows repeat the tile's last row, so that the edge tile is packed by
            // the vectorised path too (M = 20 and 32 in the LSTM steps end in a 2-row tile,
            // packed every step). Their results are never stored, or land in C's padding.
            const float* rows[MR];
            for (int64_t r = 0; r < MR; ++r) rows[r] = a + (i0 + ip + std::min(r, mr - 1)) * lda + k0;
            int64_t p = 0;
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
            for (; p + 8 <= kc; p += 8) pack_a_rows6_k8(rows, p, panel + p * MR);
#endif
            for (; p < kc; ++p)
                for (int64_t r = 0; r < MR; ++r) panel[p * MR + r] = rows[r][p];
        }
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
        for (int64_t p = 0; p < k; ++p)
            for (int64_t j = 0; j < NR; ++j) dst[p * NR + j] = j < nr ? cols[j][p] : 0.0f;
        return;
    }
    // op(B)(k, j) = b[k * ldb + j]
    pack_b_panel_rows([b, ldb](int64_t p) { return b + p * ldb; }, k, j0, nr, dst);
}

// One thread's share: rows [i0, i0+mc) x panels [jp0, jp1) of C, for the k-range [pc, pc+kc)
// whose A block is already packed. whole_tiles: the last tile's padding rows are computed
// too (C has room for them), so every row runs the same full-tile instructions. C's first
// column is that of panel c_panel0.
void compute_block(int64_t mc, int64_t kc, const float* a_packed, const PackedB& b, int64_t pc,
                   int64_t jp0, int64_t jp1, float* c_rows, int64_t ldc, bool accumulate,
                   bool whole_tiles = false, int64_t c_panel0 = 0) {
    alignas(64) float edge[MR * NR];
    const int64_t n = b.n();
    for (int64_t jp = jp0; jp < jp1; ++jp) {
        const int64_t nr = std::min(NR, n - jp * NR);
        const float* b_panel = b.panel(jp) + pc * NR;
        // The next panel comes from L3 (the packed decoder weight is megabytes): request it
        // into L2 a slice per tile, so the first tile on it does not wait for memory. With
        // few tiles per panel (the per-step products, M = batch) the prefetches cost more
        // than they save (-3..5% measured on Zen 3, against +6..13% with 9 tiles).
        const int64_t tiles = ceil_div(mc, MR), lines_per_tile = ceil_div(kc * NR / kFloatsPerLine, tiles);
        const float* b_next = jp + 1 < jp1 && tiles >= 8 ? b.panel(jp + 1) + pc * NR : nullptr;
        for (int64_t ip = 0; ip < mc; ip += MR) {
            const int64_t mr = whole_tiles ? MR : std::min(MR, mc - ip);
            if (b_next) {
                const float* first = b_next + (ip / MR) * lines_per_tile * kFloatsPerLine;
                for (int64_t l = 0; l < lines_per_tile; ++l) prefetch_l2(first + l * kFloatsPerLine);
            }
            float* c_tile = c_rows + ip * ldc + (jp - c_panel0) * NR;
            const float* a_panel = a_packed + ip * kc;
            if (nr == NR) {
                micro_kernel_rows(mr, kc, a_panel, b_panel, c_tile, ldc, accumulate);
                continue;
            }
            micro_kernel_rows(mr, kc, a_panel, b_panel, edge, NR, false);
            for (int64_t r = 0; r < mr; ++r)
                for (int64_t j = 0; j < nr; ++j)
                    c_tile[r * ldc + j] = accumulate ? c_tile[r * ldc + j] + edge[r * NR + j] : edge[r * NR + j];
        }
    }
}

// Per-thread packing and result buffers, grown to the largest request and kept.
float* thread_buffer(std::vector<float>& buffer, int64_t n) {
    if (int64_t(buffer.size()) < n) buffer.resize(n);
    return buffer.data();
}

float* thread_a_buffer() {
    static thread_local std::vector<float> buffer;
    return thread_buffer(buffer, MC * kMaxSingleKBlock);
}

}  // namespace

const char* gemm_simd_name() { return kSimdName; }

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

const float* PackedB::panel(int64_t j) const { return data_.get() + j * k_ * NR; }

namespace {

// The work of one product split into items: row blocks of at most MC rows times groups
// of NR-column panels. The rows are shared evenly between the blocks (M = 104 as 96 + 8
// left one of two threads idle in the output layer) and there are enough panel groups
// that every thread gets the same number of items.
//
// sgemm_packed_shared_a's threads take items as they finish the last one
// (shared_as_they_come): on a shared machine one core can run slower than the other for
// seconds, and fixed shares then leave the faster one waiting (11% of its time in a
// profile of the output layer in a slow minute). Its wide products are cut into at least
// 4 items per thread, as long as each panel group stays wide enough (kMinGroupPanels)
// for packing its A block again to cost little. Which thread computes an item does not
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
    // finish together: B's dh product (3 row blocks x 2 groups of 13 panels) waited 7.7%
    // of its time in the barrier with 6 + 7 panels, against 2% expected for 7 + 6.
    int64_t first_panel(int64_t group) const { return ceil_div(group * panels, panel_groups); }
};

// The k range is split evenly too, in multiples of 4 (the AVX2 kernel's unrolling):
// K = 650 runs as 220 + 220 + 210 rather than 256 + 256 + 138. Up to 2 KC it stays one
// block: the B panel then spills from L1 to L2, but each C tile is written once instead
// of stored and reloaded, and A is packed once (the LSTM's per-step products at H = 512,
// K = 512: 1.5-2.5% faster over the recurrence, measured alternating in one process).
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
void run_items(const GemmItems& items, int64_t first, int64_t last, bool trans_a, int64_t m, const float* a,
               int64_t lda, const ProductTarget* targets, int64_t count, float beta) {
    const int64_t k = targets[0].b.k(), kb = k_block(m, k);
    for (int64_t item = first; item < last; ++item) {
        const int64_t rb = item / items.panel_groups, group = item % items.panel_groups;
        const int64_t i0 = rb * items.rows_per_block, mc = std::min(items.rows_per_block, m - i0);
        const int64_t jp0 = items.first_panel(group), jp1 = items.first_panel(group + 1);
        float* a_packed = thread_a_buffer();
        for (int64_t pc = 0; pc < k; pc += kb) {
            const int64_t kc = std::min(kb, k - pc);
            pack_a(a, lda, trans_a, i0, mc, pc, kc, a_packed);
            int64_t first_panel = 0;  // of this target, in the joint numbering
            for (const ProductTarget* t = targets; t != targets + count; ++t) {
                const int64_t panels = ceil_div(t->b.n(), NR);
                const int64_t begin = std::max(jp0, first_panel), end = std::min(jp1, first_panel + panels);
                if (begin < end)
                    compute_block(mc, kc, a_packed, t->b, pc, begin - first_panel, end - first_panel,
                                  t->c + i0 * t->ldc, t->ldc, pc > 0 || beta != 0.0f);
                first_panel += panels;
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

void sgemm_packed_shared_a(bool trans_a, int64_t m, const float* a, int64_t lda,
                           std::initializer_list<ProductTarget> targets, float beta) {
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
        run_items(items, item, item + 1, trans_a, m, a, lda, targets.begin(), int64_t(targets.size()), beta);
}

void sgemm_packed_team_share(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                             float beta, float* c, int64_t ldc) {
    if (m <= 0 || b.n() <= 0 || b.k() <= 0) {
        if (thread_id() == 0) degenerate_product(m, b.n(), b.k(), beta, c, ldc);
        return;
    }
    // A fixed share per thread: the LSTM's per-step products are small and synchronised
    // every step, where taking items as they come measured 2-5% slower.
    const int64_t team = num_threads_in_region(), id = thread_id();
    const GemmItems items(m, b.n(), int(team), /*shared_as_they_come=*/false);
    const ProductTarget target{b, c, ldc};
    run_items(items, id * items.count / team, (id + 1) * items.count / team, trans_a, m, a, lda, &target, 1, beta);
}

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

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    sgemm_packed(trans_a, m, a, lda, PackedB(b, ldb, trans_b, k, n), beta, c, ldc);
}

}  // namespace fastlm
