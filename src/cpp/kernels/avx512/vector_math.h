// Vector math for the AVX-512 kernel families: exp on sixteen float lanes, the same
// operations in the same order as the AVX2 twin (kernels/avx2/vector_math.h), so that
// every lane's result is the eight-lane version's to the last bit.
#pragma once

#include <immintrin.h>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace lanes {

#define FASTLM_EACH(k) _Pragma("GCC unroll 8") for (int k = 0; k < N; ++k)

template <int N>
inline void exp_approx(__m512 (&v)[N]) {
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    __m512 shifted[N], r[N], p[N];
    // max and min return their second operand when either is NaN: v second keeps NaN.
    FASTLM_EACH(k) v[k] = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), v[k]));
    FASTLM_EACH(k) shifted[k] = _mm512_fmadd_ps(v[k], _mm512_set1_ps(1.44269504088896341f), magic);
    FASTLM_EACH(k) {
        const __m512 n = _mm512_sub_ps(shifted[k], magic);
        r[k] = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f),
                               _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v[k]));
    }
    FASTLM_EACH(k) p[k] = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r[k], _mm512_set1_ps(1.3981999507e-3f));
    FASTLM_EACH(k) p[k] = _mm512_fmadd_ps(p[k], r[k], _mm512_set1_ps(8.3334519073e-3f));
    FASTLM_EACH(k) p[k] = _mm512_fmadd_ps(p[k], r[k], _mm512_set1_ps(4.1665795894e-2f));
    FASTLM_EACH(k) p[k] = _mm512_fmadd_ps(p[k], r[k], _mm512_set1_ps(1.6666665459e-1f));
    FASTLM_EACH(k) p[k] = _mm512_fmadd_ps(p[k], r[k], _mm512_set1_ps(5.0000001201e-1f));
    FASTLM_EACH(k) p[k] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p[k], r[k]), r[k], r[k]), _mm512_set1_ps(1.0f));
    FASTLM_EACH(k) {  // times 2^n: n + 127 in the exponent field
        const __m512i biased = _mm512_sub_epi32(_mm512_castps_si512(shifted[k]),
                                                _mm512_castps_si512(_mm512_set1_ps(12582912.0f - 127.0f)));
        v[k] = _mm512_mul_ps(p[k], _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23)));
    }
}

#undef FASTLM_EACH

}  // namespace lanes
}  // namespace FASTLM_ISA
}  // namespace fastlm
