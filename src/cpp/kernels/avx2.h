// The kernel families of the AVX2 + FMA set.
#pragma once

#include "kernels/avx2/fma_vector.h"
#include "kernels/avx2/gemm_micro.h"
#include "kernels/avx2/logit_block.h"
#include "kernels/avx2/row_spans.h"
