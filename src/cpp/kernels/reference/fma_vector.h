// The widest multiply-add vector of a kernel set, for the FMA peak (peak.cpp): its type,
// width in floats, broadcast, multiply-add and first lane. The reference is one float
// (the compiler may still pack independent chains into the target's vectors).
#pragma once

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {
namespace fma_vector {

using Vec = float;
constexpr int kWidth = 1;
inline Vec splat(float x) { return x; }
inline Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
inline float first(Vec v) { return v; }

}  // namespace fma_vector
}  // namespace FASTLM_ISA
}  // namespace fastlm
