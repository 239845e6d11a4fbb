// The kernel families of the baseline set: x86-64 as every such CPU runs it (and any
// other CPU): the portable reference of each family.
#pragma once

#include "kernels/reference/fma_vector.h"
#include "kernels/reference/gemm_micro.h"
#include "kernels/reference/logit_block.h"
#include "kernels/reference/row_spans.h"
