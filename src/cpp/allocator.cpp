#include "allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fastlm {

namespace {
bool g_malloc_tuned = false;
}  // namespace

bool tune_malloc() {
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest: blocks up to 32 MiB come from the heap
    mallopt(M_TRIM_THRESHOLD, 512 << 20);  // keep up to 512 MiB of freed heap for the next batch
    g_malloc_tuned = true;
#endif
    return g_malloc_tuned;
}

bool malloc_tuned() { return g_malloc_tuned; }

}  // namespace fastlm
