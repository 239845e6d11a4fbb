// Software prefetch, for passes whose next data the hardware prefetcher does not see
// coming: the next B panel of a product, rows a page or more apart, the row a thread
// takes next.
#pragma once

#include <cstdint>

#include "isa.h"

namespace fastlm {
namespace FASTLM_ISA {

constexpr int64_t kFloatsPerLine = 64 / sizeof(float);  // one cache line

// Requests the line holding p into L1 (kLevel 3) or L2 (kLevel 2).
template <int kLevel>
inline void prefetch_line(const float* p) {
#if defined(__GNUC__)
    __builtin_prefetch(p, 0, kLevel);
#else
    (void)p;
#endif
}

// Requests every line of [begin, end) (begin need not start a line).
template <int kLevel>
inline void prefetch_range(const float* begin, const float* end) {
    for (const float* p = begin; p < end; p += kFloatsPerLine) prefetch_line<kLevel>(p);
    if (begin < end) prefetch_line<kLevel>(end - 1);
}

}  // namespace FASTLM_ISA
}  // namespace fastlm
