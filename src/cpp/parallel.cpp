#include "parallel.h"

#include <stdexcept>
#include <string>

namespace fastlm {

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("number of threads must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

int get_num_threads() { return max_threads(); }

bool has_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

}  // namespace fastlm
