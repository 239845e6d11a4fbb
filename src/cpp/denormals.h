// Flush-to-zero / denormals-are-zero while a kernel runs. Tiny gate derivatives and
// moments in LSTM training become subnormal floats, and arithmetic on subnormals is
// 10-100x slower on x86: a known source of mysterious slow-downs in LSTM libraries.
#pragma once

#if defined(__SSE2__)
#include <xmmintrin.h>
#define FASTLM_HAS_MXCSR 1
#endif

namespace fastlm {

class FlushDenormals {
public:
#if FASTLM_HAS_MXCSR
    static constexpr unsigned kFtzDaz = 0x8040;  // MXCSR bits: flush-to-zero (15), denormals-are-zero (6)

    // Sets FTZ/DAZ on the calling thread (restored on destruction) and on the OpenMP
    // workers, which only ever run fastlm's kernels and keep the setting.
    FlushDenormals() : saved_(_mm_getcsr()) {
        _mm_setcsr(saved_ | kFtzDaz);
#pragma omp parallel
        _mm_setcsr(_mm_getcsr() | kFtzDaz);
    }
    ~FlushDenormals() { _mm_setcsr(saved_); }

private:
    unsigned saved_;
#else
    FlushDenormals() = default;
#endif
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;
};

}  // namespace fastlm
