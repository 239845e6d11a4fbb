// The machine's float32 multiply-add peak, measured: the denominator of every "% of peak"
// in the benchmarks, taken with the instruction set of the kernels in use.
#pragma once

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

// Runs independent FMA chains in registers on every thread for about `seconds` and
// returns the total GFLOP/s (one FMA = 2 flops).
double fma_peak_gflops(double seconds);

}  // namespace FASTLM_ISA
}  // namespace fastlm
