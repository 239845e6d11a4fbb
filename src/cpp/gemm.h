// Single-precision matrix products, BLIS-style: operands packed into cache-sized
// panels, an MR x NR register-tiled microkernel (AVX-512, AVX2 or scalar, chosen
// at build time), OpenMP over output tiles.
//
// All matrices are row-major. op(X) is X or its transpose. C = op(A) op(B) + beta C,
// with beta 0 (C is only written, never read) or 1 (accumulate).
#pragma once

#include <cstdint>

#include "allocator.h"

namespace fastlm {

const char* gemm_simd_name();  // "avx512", "avx2" or "scalar"

// op(B) (K x N) packed once into the microkernel's panel layout, for products that
// reuse the same right-hand matrix many times (the recurrent weights at every time
// step, the decoder weights for every row chunk).
class PackedB {
public:
    PackedB() = default;
    PackedB(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t n);
    int64_t k() const { return k_; }
    int64_t n() const { return n_; }
    const float* panel(int64_t j) const;  // panel j covers columns [j*NR, j*NR+NR)
    int64_t panel_stride() const;         // floats between consecutive panels
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

// Inside a parallel region: this thread's static share of the same product (no barrier;
// the caller synchronises before C is read). With no region active it does all the work.
void sgemm_packed_team_share(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                             float beta, float* c, int64_t ldc);

}  // namespace fastlm
