// Elementwise exp, sigmoid and tanh written so that the compiler vectorises loops
// over them (no libm calls): a Cephes-style polynomial exp, accurate to ~2 ulp.
// NaN propagates; large arguments saturate instead of overflowing.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

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
}  // namespace FASTLM_ISA
}  // namespace fastlm
