// The GEMM core on the shapes the four configurations multiply, against the FMA peak.
//
// Build and run from the repository root (the flags of the package's own build):
//
//   g++ -std=c++17 -O3 -march=native -fopenmp -fno-math-errno -fno-trapping-math -Isrc/cpp
//       bench/gemm_shapes.cpp src/cpp/gemm.cpp src/cpp/parallel.cpp src/cpp/peak.cpp src/cpp/allocator.cpp
//       -o /tmp/gemm_shapes
//   OMP_NUM_THREADS=2 /tmp/gemm_shapes
//
// -march=native times the kernels of the best instruction set the compiler enables there
// (src/cpp/isa.h); for one set as the portable build compiles it, replace -march=native
// by that set's flags and level from CMakeLists.txt, e.g. -mavx2 -mfma -DFASTLM_ISA_LEVEL=1.
//
// Each shape is timed with its right-hand matrix packed once (as the kernels use it) and
// reported as the best of five rounds: the machine's noise only ever slows a round down,
// and on a shared virtual machine a whole run can land in a slow minute (run it twice).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "allocator.h"
#include "gemm.h"
#include "isa.h"
#include "peak.h"

namespace {

namespace kernels = fastlm::FASTLM_ISA;

struct Shape {
    const char* what;
    int64_t m, n, k;
    bool trans_a;
};

// (M, N, K) of op(A) (M x K) times B (K x N).
// The training output layer's chunks have max(2^20, V H) logits (output_loss.cpp's
// chunk_rows): 128 rows on A, 200 on B, 650 on C. B's shapes are the zaremba-small preset's
// (B = 20, T = 20: two chunks of 200 rows per step; bench/step_parts.py).
const Shape kShapes[] = {
    {"A logits chunk: 128 rows x V=10000, H=128", 128, 10000, 128, false},
    {"A dW chunk: V=10000 x H=128 over 128 rows", 10000, 128, 128, true},
    {"A dh chunk: 128 rows x H=128 over V=10000", 128, 128, 10000, false},
    {"B logits chunk: 200 rows x V=10000, H=200", 200, 10000, 200, false},
    {"B dW chunk: V=10000 x H=200 over 200 rows", 10000, 200, 200, true},
    {"B dh chunk: 200 rows x H=200 over V=10000", 200, 200, 10000, false},
    {"B recurrent step: batch 20 x 4H=800, H=200", 20, 800, 200, false},
    {"C logits chunk: 650 rows x V=10000, H=650", 650, 10000, 650, false},
    {"C input projection: 700 rows x 4H=2600, E=650", 700, 2600, 650, false},
    {"C recurrent step: batch 20 x 4H=2600, H=650", 20, 2600, 650, false},
    {"D recurrent step: batch 32 x 4H=2048, H=512", 32, 2048, 512, false},
    {"D backward step: batch 32 x H=512 over 4H=2048", 32, 512, 2048, false},
    // Config W (issue 16: V 50,000, E = H = 256, B 32, T 100, adaptive head of 2,002 columns):
    // the head's chunks of 2^20 / 2002 = 523 rows, and the LSTM's products over N = 3200 rows.
    {"W head logits chunk: 523 rows x 2002, H=256", 523, 2002, 256, false},
    {"W head dW chunk: 2002 x H=256 over 523 rows", 2002, 256, 523, true},
    {"W LSTM input projection: 3200 rows x 4H=1024, E=256", 3200, 1024, 256, false},
    {"W LSTM dx: 3200 rows x E=256 over 4H=1024", 3200, 256, 1024, false},
    {"W LSTM dW_ih: 4H=1024 x E=256 over 3200 rows", 1024, 256, 3200, true},
    {"square 2048", 2048, 2048, 2048, false},
};

// The dh products as the output layer runs them: B (the decoder weight W) read in place.
const Shape kInPlaceShapes[] = {
    {"B dh chunk, W read in place (no pack)", 200, 200, 10000, false},
    {"W head dh chunk, W in place: 523 x 256 over 2002", 523, 256, 2002, false},
};

double seconds_per_product(const Shape& s, int repeats) {
    std::vector<float> a(s.m * s.k), b(s.k * s.n), c(s.m * s.n);
    for (size_t i = 0; i < a.size(); ++i) a[i] = float(i % 13) * 0.01f;
    for (size_t i = 0; i < b.size(); ++i) b[i] = float(i % 7) * 0.01f;
    const kernels::PackedB packed(b.data(), s.n, false, s.k, s.n);
    const int64_t lda = s.trans_a ? s.m : s.k;
    kernels::sgemm_packed(s.trans_a, s.m, a.data(), lda, packed, 0.0f, c.data(), s.n);  // warm-up
    double best = 1e30;
    for (int round = 0; round < 5; ++round) {
        const auto start = std::chrono::steady_clock::now();
        for (int r = 0; r < repeats; ++r)
            kernels::sgemm_packed(s.trans_a, s.m, a.data(), lda, packed, 0.0f, c.data(), s.n);
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        best = std::min(best, elapsed / repeats);
    }
    return best;
}

// The decoder weight W (V x H) packed as the training output layer packs it once per
// step, both ways: W^T for the logits, W for dh, each on its own and both in one pass
// (PackedB::both_ways, as the layer packs them). GB/s of W read.
enum class PackWay { kTransposed, kAsIs, kBoth };
struct Pack {
    const char* what;
    int64_t v, h;
    PackWay way;
};

const Pack kPacks[] = {
    {"B pack W^T (logits): V=10000, H=200", 10000, 200, PackWay::kTransposed},
    {"B pack W (dh): V=10000, H=200", 10000, 200, PackWay::kAsIs},
    {"B pack W both ways, one pass: V=10000, H=200", 10000, 200, PackWay::kBoth},
};

double seconds_per_pack(const Pack& s, int repeats) {
    std::vector<float> w(s.v * s.h);
    for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 11) * 0.01f;
    double best = 1e30;
    for (int round = 0; round < 5; ++round) {
        const auto start = std::chrono::steady_clock::now();
        for (int r = 0; r < repeats; ++r) {
            float first = 0.0f;
            if (s.way == PackWay::kBoth) {
                const auto packed = kernels::PackedB::both_ways(w.data(), s.h, s.v, s.h);
                first = packed.first.panel(0)[0] + packed.second.panel(0)[0];
            } else {
                const kernels::PackedB packed = s.way == PackWay::kTransposed
                                                    ? kernels::PackedB(w.data(), s.h, true, s.h, s.v)
                                                    : kernels::PackedB(w.data(), s.h, false, s.v, s.h);
                first = packed.panel(0)[0];
            }
            if (first < 0.0f) std::printf("?");  // keep the pack
        }
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        best = std::min(best, elapsed / repeats);
    }
    return best;
}

}  // namespace

int main() {
    fastlm::tune_malloc();  // as the package does on import: the packs' buffers stay in the heap
    const double peak = kernels::fma_peak_gflops(0.5);
    std::printf("%s, %d threads, FMA peak %.1f GFLOP/s\n", FASTLM_ISA_NAME, omp_get_max_threads(), peak);
    for (const Shape& s : kShapes) {
        const double flops = 2.0 * s.m * s.n * s.k;
        const int repeats = std::max(1, int(1e10 / flops));  // about 0.1 s per round at 100 GFLOP/s
        const double gflops = flops / seconds_per_product(s, repeats) / 1e9;
        std::printf("  %-50s %7.1f GFLOP/s  %5.1f%% of peak  %8.3f ms\n", s.what, gflops, 100.0 * gflops / peak,
                    1e3 * flops / gflops / 1e9);
    }
    for (const Shape& s : kInPlaceShapes) {
        std::vector<float> a(s.m * s.k), b(s.k * s.n), c(s.m * s.n);
        for (size_t i = 0; i < a.size(); ++i) a[i] = float(i % 13) * 0.01f;
        for (size_t i = 0; i < b.size(); ++i) b[i] = float(i % 7) * 0.01f;
        const double flops = 2.0 * s.m * s.n * s.k;
        double best = 1e30;
        for (int round = 0; round < 5; ++round) {
            const auto start = std::chrono::steady_clock::now();
            for (int r = 0; r < 10; ++r)
                kernels::sgemm_b_in_place(s.m, s.n, s.k, a.data(), s.k, b.data(), s.n, c.data(), s.n);
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 10);
        }
        std::printf("  %-50s %7.1f GFLOP/s  %5.1f%% of peak  %8.3f ms\n", s.what, flops / best / 1e9,
                    100.0 * flops / best / 1e9 / peak, 1e3 * best);
    }
    for (const Pack& s : kPacks) {
        const double seconds = seconds_per_pack(s, 20);
        std::printf("  %-50s %7.1f GB/s of W      %8.3f ms\n", s.what, 4.0 * s.v * s.h / seconds / 1e9, 1e3 * seconds);
    }
}
