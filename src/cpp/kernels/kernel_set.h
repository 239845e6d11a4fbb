// The kernel families for the instruction set this translation unit is compiled for
// (isa.h): the one choice of SIMD code in the sources. Each set's header lists its
// families, one file per family under kernels/<isa>/ (kernels/reference/ for the
// portable ones).
#pragma once

#include "isa.h"

#if FASTLM_ISA_LEVEL == FASTLM_ISA_AVX512
#include "kernels/avx512.h"
#elif FASTLM_ISA_LEVEL == FASTLM_ISA_AVX2
#include "kernels/avx2.h"
#else
#include "kernels/baseline.h"
#endif
