// Elementwise exp, sigmoid and tanh written so that the compiler vectorises loops
// over them (no libm calls): a Cephes-style polynomial exp, accurate to ~2 ulp.
// NaN propagates; large arguments saturate instead of overflowing.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace fastlm {

inline float exp_approx(float x) {
    // Clamp so that 2^n stays a normal float; comparisons keep NaN as NaN.
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    // n = round(x / ln2) by the 1.5 * 2^23 trick: plain adds, so the loop vectorises
    // (std::floor would not without -fno-trapping-math).
    const float shifted = x * 1.44269504088896341f + 12582912.0f;
    const float n = shifted - 12582912.0f;
    // x - n*ln2 in two parts (Cody-Waite) to keep the reduced argument exact.
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // 2^n from the low bits of the shifted sum, in unsigned arithmetic as the vector
    // version does: converting a NaN n to an integer and shifting it would be undefined.
    uint32_t bits, bias;
    const float biased_zero = 12582912.0f - 127.0f;
    std::memcpy(&bits, &shifted, sizeof bits);
    std::memcpy(&bias, &biased_zero, sizeof bias);
    bits = (bits - bias) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

// tanh(x) = 1 - 2 / (exp(2x) + 1): saturates cleanly to +-1 for large |x|.
inline float tanh_approx(float x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }

#if defined(__AVX2__) && defined(__FMA__)
// The same functions on N vectors of eight lanes, in place, for the LSTM cells and the
// softmax sums. Every step runs across all N vectors before the next, so N dependence
// chains interleave: GCC does not reorder instructions on x86, and one chain (about 20
// dependent operations) leaves the FP scheduler waiting on latencies (exp: 8.9 cycles
// per vector alone, 7.6 three at a time on Zen 3). The reciprocals in sigmoid and tanh
// come from the hardware estimate and one Newton step (the divisions they replace were
// 20% of a cell's time; the result is within ~1 ulp of a division, and the divisor is
// >= 1, so the estimate never meets a zero or an infinity).
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
#endif

}  // namespace fastlm
