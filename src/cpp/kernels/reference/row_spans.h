// The row families' interface, and its reference: no vector code, so every function
// handles nothing and returns where it started; the caller's scalar loop, written so the
// compiler may vectorise it for the target, does the whole range.
//
// Each function handles a prefix of its range and returns where it stopped:
//   sigmoid<kBias>/tanh<kBias>(n, in, bias, out)   out[j] = f(in[j] (+ bias[j]))
//   lstm_state(H, i, f, g, o, c_prev, c, h)         c = f*c_prev + i*g; h = o*tanh(c)
//   add_bias_max(z, bias, V, lanes)                 z += bias, max folded into lanes[0..8)
//   row_max(z, V, lanes)                            max of z folded into lanes[0..8)
//   exp_sum<kStore>(z, begin, end, peak, lanes)     exp(z - peak) summed into lanes[0..8)
// Results stay within rounding of the scalar loop's, not to the bit: the AVX2 family's
// sigmoid and tanh divide by a reciprocal estimate and a Newton step (~1 ulp), and the
// sums fold in lanes. Determinism comes from each element's path (span or scalar tail)
// being fixed by the row length alone, so code that regroups elements (other row lengths
// per call) changes bits.
#pragma once

#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace row_spans {

template <bool kBias>
inline int64_t sigmoid(int64_t, const float*, const float*, float*) { return 0; }

template <bool kBias>
inline int64_t tanh(int64_t, const float*, const float*, float*) { return 0; }

inline int64_t lstm_state(int64_t, const float*, const float*, const float*, const float*, const float*, float*,
                          float*) {
    return 0;
}

inline int64_t add_bias_max(float*, const float*, int64_t, float*) { return 0; }

inline int64_t row_max(const float*, int64_t, float*) { return 0; }

template <bool kStore>
inline int64_t exp_sum(float*, int64_t begin, int64_t, float, float*) { return begin; }

}  // namespace row_spans
}  // namespace FASTLM_ISA
}  // namespace fastlm
