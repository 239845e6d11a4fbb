// Vector math for the AVX2 kernel families: exp, sigmoid and tanh on eight float lanes,
// the vector twins of activations.h's scalar functions (same polynomial, same clamps).
#pragma once

#include <immintrin.h>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

// The functions on N vectors of eight lanes, in place, for the LSTM cells and the softmax
// sums. Every step runs across all N vectors before the next, so N dependence chains
// interleave: GCC does not reorder instructions on x86, and a single chain (about 20
// dependent operations) leaves the FP units waiting on latencies. The reciprocals in
// sigmoid and tanh come from the hardware estimate and one Newton step, cheaper than a
// division and within ~1 ulp of it; the divisor is >= 1, so the estimate never meets a
// zero or an infinity.
namespace lanes {

#define FASTLM_EACH(k) _Pragma("GCC unroll 8") for (int k = 0; k < N; ++k)

template <int N>
inline void exp_approx(__m256 (&v)[N]) {
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    __m256 shifted[N], r[N], p[N];
    // max and min return their second operand when either is NaN: v second keeps NaN.
    FASTLM_EACH(k) v[k] = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), v[k]));
    // n = round(x / ln2) by the 1.5 * 2^23 trick, as in the scalar version; the integer n
    // is then the low bits of the shifted sum (no rounding or conversion instructions).
    FASTLM_EACH(k) shifted[k] = _mm256_fmadd_ps(v[k], _mm256_set1_ps(1.44269504088896341f), magic);
    FASTLM_EACH(k) {
        const __m256 n = _mm256_sub_ps(shifted[k], magic);
        r[k] = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), v[k]));
    }
    FASTLM_EACH(k) p[k] = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r[k], _mm256_set1_ps(1.3981999507e-3f));
    FASTLM_EACH(k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(8.3334519073e-3f));
    FASTLM_EACH(k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(4.1665795894e-2f));
    FASTLM_EACH(k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(1.6666665459e-1f));
    FASTLM_EACH(k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(5.0000001201e-1f));
    FASTLM_EACH(k) p[k] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p[k], r[k]), r[k], r[k]), _mm256_set1_ps(1.0f));
    FASTLM_EACH(k) {  // times 2^n: n + 127 in the exponent field
        const __m256i biased = _mm256_sub_epi32(_mm256_castps_si256(shifted[k]),
                                                _mm256_castps_si256(_mm256_set1_ps(12582912.0f - 127.0f)));
        v[k] = _mm256_mul_ps(p[k], _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
    }
}

template <int N>
inline void reciprocal(__m256 (&v)[N]) {
    __m256 r[N];
    FASTLM_EACH(k) r[k] = _mm256_rcp_ps(v[k]);  // 12 bits; the residual 1 - d r is exact in an FMA
    FASTLM_EACH(k) v[k] = _mm256_fmadd_ps(r[k], _mm256_fnmadd_ps(v[k], r[k], _mm256_set1_ps(1.0f)), r[k]);
}

template <int N>
inline void sigmoid(__m256 (&v)[N]) {  // 1 / (1 + exp(-x))
    FASTLM_EACH(k) v[k] = _mm256_sub_ps(_mm256_setzero_ps(), v[k]);
    exp_approx(v);
    FASTLM_EACH(k) v[k] = _mm256_add_ps(v[k], _mm256_set1_ps(1.0f));
    reciprocal(v);
}

template <int N>
inline void tanh_approx(__m256 (&v)[N]) {  // 1 - 2 / (exp(2x) + 1)
    FASTLM_EACH(k) v[k] = _mm256_add_ps(v[k], v[k]);
    exp_approx(v);
    FASTLM_EACH(k) v[k] = _mm256_add_ps(v[k], _mm256_set1_ps(1.0f));
    reciprocal(v);
    FASTLM_EACH(k) v[k] = _mm256_fnmadd_ps(_mm256_set1_ps(2.0f), v[k], _mm256_set1_ps(1.0f));
}

#undef FASTLM_EACH

}  // namespace lanes

}  // namespace FASTLM_ISA
}  // namespace fastlm
