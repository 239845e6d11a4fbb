// One LSTM layer over a whole (B, T) sequence, PyTorch's equations and gate order
// (i, f, g, o). Forward and backward through time side by side; the cell step and the
// packed layer that generation and scoring step through.
//
// Shapes (row-major): x (B, T, I), w_ih (4H, I), w_hh (4H, H), b_ih and b_hh (4H),
// h0 and c0 (B, H); hs and cs (B, T, H); gates (B, T, 4H) holds the activations
// [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)] that backward needs.
#pragma once

#include <cstdint>
#include <vector>

#include "gemm.h"
#include "isa.h"
#include "kernels.h"

namespace fastlm {
namespace FASTLM_ISA {

// One cell step for a single row: a (4H) gate pre-activations, bias not yet added, in place
// -> activations; c = f*c_prev + i*g; h = o*tanh(c). Shared by training and generation.
void lstm_cell_forward(int64_t H, const float* bias, float* a, const float* c_prev, float* c, float* h);

// A layer (hidden size H) as inference steps it: W_ih and W_hh packed as the right-hand
// sides of x W_ih^T and h W_hh^T, and the two biases summed once. Generation and scoring
// pack each layer once per session or call.
struct PackedLstmLayer {
    PackedB w_ih_t, w_hh_t;
    std::vector<float> bias;  // b_ih + b_hh (4H)
    PackedLstmLayer(const LstmLayerView& layer, int64_t H);
};

void lstm_forward(const LstmShape& s, const float* x, const float* w_ih, const float* w_hh,
                  const float* b_ih, const float* b_hh, const float* h0, const float* c0,
                  float* hs, float* cs, float* gates);

// dhs (B, T, H): gradient from above; dh_n, dc_n (B, H): gradient into the final state,
// or nullptr for none. Outputs: dx (B, T, I), dw_ih, dw_hh, db (4H, the gradient of
// both bias vectors), dh0 and dc0 (B, H).
void lstm_backward(const LstmShape& s, const float* dhs, const float* dh_n, const float* dc_n,
                   const float* x, const float* w_ih, const float* w_hh, const float* h0,
                   const float* c0, const float* hs, const float* cs, const float* gates,
                   float* dx, float* dw_ih, float* dw_hh, float* db, float* dh0, float* dc0);

}  // namespace FASTLM_ISA
}  // namespace fastlm
