#include "allocator.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fastlm {

bool tune_malloc() {
#if defined(__GLIBC__)
    const char* opt_out = std::getenv("FASTLM_MALLOC_TUNING");
    const char* tunables = std::getenv("GLIBC_TUNABLES");
    if ((opt_out && std::strcmp(opt_out, "0") == 0) || (tunables && std::strstr(tunables, "malloc")))
        return false;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest: blocks up to 32 MiB come from the heap
    mallopt(M_TRIM_THRESHOLD, 512 << 20);  // keep up to 512 MiB of freed heap for the next batch
    return true;
#else
    return false;
#endif
}

}  // namespace fastlm
