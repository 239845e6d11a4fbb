// The instruction set a kernel translation unit is compiled for, and its namespace.
//
// Every kernel source (each .cpp in src/cpp except the baseline files CMakeLists.txt
// lists) is compiled once per instruction set, and each copy lives in its own namespace,
// fastlm::FASTLM_ISA (fastlm::baseline, fastlm::avx2, fastlm::avx512), so the copies
// never share a symbol. dispatch.cpp picks one copy's table (kernel_table.cpp) at import.
//
// The build names the set of each copy (-DFASTLM_ISA_LEVEL with the compiler flags that
// go with it); a native build (-march=native) leaves it unset and the set is read here
// from the compiler's macros. This header is the one place that tests them.
#pragma once

#define FASTLM_ISA_BASELINE 0  // x86-64 as every such CPU runs it (SSE2), or any other CPU
#define FASTLM_ISA_AVX2 1      // AVX2 + FMA
#define FASTLM_ISA_AVX512 2    // AVX-512 F, BW, VL, DQ (with AVX2 + FMA)

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX2__) && defined(__FMA__)
#define FASTLM_ISA_COMPILER_LEVEL FASTLM_ISA_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define FASTLM_ISA_COMPILER_LEVEL FASTLM_ISA_AVX2
#else
#define FASTLM_ISA_COMPILER_LEVEL FASTLM_ISA_BASELINE
#endif

#if !defined(FASTLM_ISA_LEVEL)
#define FASTLM_ISA_LEVEL FASTLM_ISA_COMPILER_LEVEL
#elif FASTLM_ISA_LEVEL > FASTLM_ISA_COMPILER_LEVEL
#error "FASTLM_ISA_LEVEL names an instruction set the compiler flags do not enable"
#endif

#if FASTLM_ISA_LEVEL == FASTLM_ISA_AVX512
#define FASTLM_ISA avx512
#elif FASTLM_ISA_LEVEL == FASTLM_ISA_AVX2
#define FASTLM_ISA avx2
#else
#define FASTLM_ISA baseline
#endif

#define FASTLM_ISA_STRINGIFY_(x) #x
#define FASTLM_ISA_STRINGIFY(x) FASTLM_ISA_STRINGIFY_(x)
#define FASTLM_ISA_NAME FASTLM_ISA_STRINGIFY(FASTLM_ISA)  // "baseline", "avx2" or "avx512"
