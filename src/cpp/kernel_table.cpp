// The table of this instruction set's kernels (kernels.h), the one symbol of a kernel
// copy that the rest of the extension sees: fastlm_kernels_<isa>, C linkage so that its
// name is plain (dispatch.cpp looks for it, CMakeLists.txt keeps it global).
#include "adaptive_softmax.h"
#include "embedding.h"
#include "generate.h"
#include "isa.h"
#include "kernels.h"
#include "lstm.h"
#include "optimizer.h"
#include "output_loss.h"
#include "peak.h"
#include "scoring.h"
#include "sparse_embedding.h"

#define FASTLM_TABLE_FUNCTION_(isa) fastlm_kernels_##isa
#define FASTLM_TABLE_FUNCTION(isa) FASTLM_TABLE_FUNCTION_(isa)

namespace fastlm {
namespace FASTLM_ISA {
namespace {

// In the order of Kernels' members (-Wmissing-field-initializers catches a missing one).
const Kernels kTable = {
    FASTLM_ISA_NAME,
    &embedding_forward,
    &embedding_backward,
    &embedding_backward_sparse,
    &lstm_forward,
    &lstm_backward,
    &output_loss_forward,
    &output_loss_backward,
    &output_loss_forward_backward,
    &adaptive_loss_forward,
    &adaptive_loss_forward_backward,
    &adaptive_log_prob,
    &all_finite,
    &adam_update,
    &adam_update_rows,
    &sparse_adam_update,
    &sparse_sgd_update,
    &sgd_update,
    &sgd_update_rows,
    &clip_grad_norm,
    &clip_grad_norm_rows,
    &clipped_sgd_update,
    &generate,
    &fma_peak_gflops,
    &make_generation_session,
    &score_sequences,
    &score_streams,
    &output_scores,
    &prediction_counts,
};

}  // namespace
}  // namespace FASTLM_ISA
}  // namespace fastlm

extern "C" const fastlm::Kernels* FASTLM_TABLE_FUNCTION(FASTLM_ISA)() { return &fastlm::FASTLM_ISA::kTable; }
