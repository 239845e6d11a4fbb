// Which kernel table the extension uses, chosen once, at import: the best instruction
// set that this build holds kernels for and this CPU runs, or the lower one FASTLM_ISA
// names. Like the rest of the baseline code this runs on every x86-64 CPU: it is
// compiled without instruction-set flags in the portable build.
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

// Each kernel copy's table (kernel_table.cpp). Weak references: a native build holds
// one copy only, and the others are null here.
extern "C" {
__attribute__((weak)) const fastlm::Kernels* fastlm_kernels_baseline();
__attribute__((weak)) const fastlm::Kernels* fastlm_kernels_avx2();
__attribute__((weak)) const fastlm::Kernels* fastlm_kernels_avx512();
}

namespace fastlm {
namespace {

struct KernelSet {
    const char* name;
    const Kernels* (*table)();  // null: not in this build
    bool cpu_runs;
};

// The sets lowest first. __builtin_cpu_supports also checks that the operating system
// saves the wider registers (XSAVE), not only that the CPU has the instructions.
std::vector<KernelSet> kernel_sets() {
    bool avx2 = false, avx512 = false;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    return {{"baseline", fastlm_kernels_baseline, true},
            {"avx2", fastlm_kernels_avx2, avx2},
            {"avx512", fastlm_kernels_avx512, avx512}};
}

std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
    return out.empty() ? "none" : out;
}

std::vector<std::string> names_where(bool (*keep)(const KernelSet&)) {
    std::vector<std::string> names;
    for (const KernelSet& s : kernel_sets())
        if (keep(s)) names.push_back(s.name);
    return names;
}

bool in_build(const KernelSet& s) { return s.table != nullptr; }
bool usable(const KernelSet& s) { return s.table != nullptr && s.cpu_runs; }

const Kernels& choose() {
    const std::vector<std::string> available = names_where(usable);
    if (available.empty())
        throw std::runtime_error("fastlm was built (FASTLM_NATIVE=ON) for the " + join(names_where(in_build)) +
                                 " instruction set, which this CPU does not run; rebuild it here, or build the "
                                 "portable default (FASTLM_NATIVE=OFF)");
    const char* env = std::getenv("FASTLM_ISA");
    const std::string wanted = env && *env ? env : available.back();
    for (const KernelSet& s : kernel_sets()) {
        if (wanted != s.name) continue;
        if (!s.table)
            throw std::invalid_argument("FASTLM_ISA=" + wanted + ": this build holds no " + wanted +
                                        " kernels (it holds " + join(names_where(in_build)) +
                                        "; FASTLM_NATIVE=ON builds the building CPU's set only)");
        if (!s.cpu_runs)
            throw std::invalid_argument("FASTLM_ISA=" + wanted + ": this CPU does not run " + wanted +
                                        " (it runs " + join(available) + ")");
        return *s.table();
    }
    throw std::invalid_argument("FASTLM_ISA='" + wanted +
                                "' names no instruction set: use baseline, avx2 or avx512, or leave it unset "
                                "for the best this CPU runs (" + available.back() + ")");
}

}  // namespace

const Kernels& kernels() {
    static const Kernels& chosen = choose();
    return chosen;
}

std::vector<std::string> isa_available() { return names_where(usable); }

}  // namespace fastlm
