// Single-precision matrix products, BLIS-style: operands packed into cache-sized
// panels, an MR x NR register-tiled microkernel (the instruction set's family in
// kernels/<isa>/gemm_micro.h), OpenMP over output tiles. This file and gemm.cpp are the
// frame: blocking, packing and threading, the same for every instruction set.
//
// All matrices are row-major. op(X) is X or its transpose. C = op(A) op(B) + beta C,
// with beta 0 (C is only written, never read) or 1 (accumulate).
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <utility>

#include "allocator.h"
#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

// op(B) (K x N) packed once into the microkernel's panel layout, for products that
// reuse the same right-hand matrix many times (the recurrent weights at every time
// step, the decoder weights for every row chunk).
class PackedB {
public:
    PackedB() = default;
    PackedB(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t n);
    // op(B) whose rows are not one strided block: row p (n floats) starts at row(p). The
    // LSTM's h_{t-1} of every step is h0 for t = 0 and the row before otherwise.
    PackedB(const std::function<const float*(int64_t)>& row, int64_t k, int64_t n);
    // b (rows x cols) packed both ways in one pass over it: first as PackedB(b, ldb, true,
    // cols, rows) packs b^T, second as PackedB(b, ldb, false, rows, cols) packs b. Each
    // block of rows that makes a panel of b^T is read from memory once and copied to b's
    // panels while in cache (the decoder's logits = h W^T and dh = dlogits W).
    static std::pair<PackedB, PackedB> both_ways(const float* b, int64_t ldb, int64_t rows, int64_t cols);
    int64_t k() const { return k_; }
    int64_t n() const { return n_; }
    const float* panel(int64_t j) const;  // panel j covers columns [j*NR, j*NR+NR)
private:
    int64_t k_ = 0, n_ = 0;
    ScratchFloats data_;
};

// C (M x N, leading dimension ldc) = op(A) (M x K) * op(B) (K x N) + beta * C.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
           const float* a, int64_t lda, const float* b, int64_t ldb,
           float beta, float* c, int64_t ldc);

// The same with op(B) already packed.
void sgemm_packed(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                  float beta, float* c, int64_t ldc);

// The same product, each row of C computed with the same arithmetic whatever m is
// (sgemm_packed runs an edge tile of one or two rows with two k-chains, and blocks k
// differently for few rows): a row's result does not depend on the rows beside it.
// Scoring and generation, so that a sequence's scores and a sample's draws do not depend
// on the others computed with it, nor a text's on the size of the pieces it is scored in.
// A tile of one or two rows runs one chain per element across several panels at once
// (micro_kernel_one_chain): no slower than sgemm_packed's two chains on one panel.
void sgemm_packed_row_invariant(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                                float beta, float* c, int64_t ldc);

// One output of sgemm_packed_shared_a: C (leading dimension ldc) = op(A) B + beta C.
struct ProductTarget {
    const PackedB& b;
    float* c;
    int64_t ldc;
};

// Several products with the same left operand, all B with the same K: op(A) is packed
// once for all of them, so a large op(A) is read once (the LSTM's gate gradients give
// dW_ih, dW_hh and, against a column of ones, db in one pass).
void sgemm_packed_shared_a(bool trans_a, int64_t m, const float* a, int64_t lda,
                           std::initializer_list<ProductTarget> targets, float beta);

// Inside a parallel region: this thread's static share of the same product (no barrier;
// the caller synchronises before C is read). With no region active it does all the work.
// row_invariant: each row computed as sgemm_packed_row_invariant computes it (scoring's
// recurrence, whose products have as many rows as sequences are still running).
void sgemm_packed_team_share(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                             float beta, float* c, int64_t ldc, bool row_invariant = false);

// The same product on the calling thread alone, inside a parallel region or not, with
// sgemm_packed_team_share's arithmetic (bit-equal C): a recurrence too small to share
// runs on one thread while the others do other work.
void sgemm_packed_one_thread(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                             float beta, float* c, int64_t ldc, bool row_invariant = false);

// sgemm_packed_one_thread's product, bit-equal to it, with its panels in a given order:
// each through all its k blocks before the next, last to first when backward. A
// recurrence whose weights outgrow L2 alternates the direction step by step, so that each
// step starts on the panels the step before left in L2 (swept in one direction, each
// panel would be evicted just before its next use).
void sgemm_packed_one_thread_sweep(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b, float beta,
                                   float* c, int64_t ldc, bool backward);

// C (M x N) = A (M x K) B (K x N), both row-major and untransposed, with B read where it
// lies where the instruction set's microkernel can (kBInPlace in kernels/<isa>/
// gemm_micro.h), else packed first: bit-equal to sgemm either way. For a B used once per
// call that packing would copy whole (the output layer's dh = dlogits W, W 8 MB at
// V = 10000, H = 200).
void sgemm_b_in_place(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                      float* c, int64_t ldc);

// sgemm_b_in_place's product for callers that share out work themselves: the calling
// thread alone, op(A) transposed or not, C = op(A) B + beta C (beta 0 or 1), bit-equal to
// sgemm_packed_one_thread with B packed. The thin output layers' dh^T += W_b^T G^T reads
// each block's softmax G^T (block x rows, in L2) where it lies instead of copying it.
void sgemm_b_in_place_one_thread(bool trans_a, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The k blocks every product of m rows of op(A) over inner size k is cut into: each
// element of C is one chain of multiply-adds from zero per block of this many k steps,
// the blocks' sums added to C in order (tiles of kOneChainRows rows or more). The LSTM's
// bias gradient sums its gate gradients' columns so, bit-equal to the product against a
// column of ones it replaced.
int64_t sgemm_k_block(int64_t m, int64_t k);

// Receives one block of C: c[i * ldc + j] is the product at row i, column j0 + j, for
// rows [0, m) and j in [0, n). Valid only during the call.
using BlockConsumer = std::function<void(int64_t j0, int64_t n, const float* c, int64_t ldc)>;

// The calling thread alone, for callers that share out row blocks themselves and use C
// while it is in cache (the output layer's softmax, which never stores the logits):
// op(A) (m x K) is packed once, then C = op(A) B is computed for columns [j_begin, j_end)
// in blocks of column_block columns and each block handed to consume. j_begin and
// column_block must be multiples of the build's panel width (8, 16 or 32 columns: 256
// suits every build), else std::invalid_argument. Every row is computed by the same
// full-tile instructions, so equal rows of op(A) give bit-equal rows of C.
void sgemm_packed_row_block(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                            int64_t j_begin, int64_t j_end, int64_t column_block, const BlockConsumer& consume);

// Element (i, j) of sgemm_packed_row_block's product of m rows, alone and bit-equal to
// it: a_row is row i of op(A), b_column column j of B (k floats each, contiguous). The
// output layer's scoring compares every logit with the target's before the target's
// block of logits has been computed.
float sgemm_packed_row_block_element(int64_t m, const float* a_row, const float* b_column, int64_t k);

}  // namespace FASTLM_ISA
}  // namespace fastlm
