// The widest multiply-add vector of the AVX-512 set (see kernels/reference/fma_vector.h).
#pragma once

#include <immintrin.h>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace fma_vector {

using Vec = __m512;
constexpr int kWidth = 16;
inline Vec splat(float x) { return _mm512_set1_ps(x); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float first(Vec v) { return _mm512_cvtss_f32(v); }

}  // namespace fma_vector
}  // namespace FASTLM_ISA
}  // namespace fastlm
