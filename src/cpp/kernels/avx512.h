// The kernel families of the AVX-512 set: its own gemm microkernel, FMA vector and logit
// block; the row families are the AVX2 ones compiled again for this set, but for the
// softmax reductions (kernels/avx512/row_spans.h).
#pragma once

#include "kernels/avx512/row_spans.h"
#include "kernels/avx512/fma_vector.h"
#include "kernels/avx512/gemm_micro.h"
#include "kernels/avx512/logit_block.h"
