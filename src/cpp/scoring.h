// Scoring token sequences of different lengths: the log-probability of every token given
// the ones before it, many sequences at once, and the counts behind next-token metrics.
#pragma once

#include <cstdint>
#include <functional>

#include "generate.h"
#include "isa.h"
#include "kernels.h"
#include "output_loss.h"

namespace fastlm {
namespace FASTLM_ISA {

// The tokens of sequence i are ids[offsets[i] .. offsets[i + 1]). Each is scored from a
// zero state: with bos >= 0 the first input is bos and every token is a target (as many
// scores as tokens); with bos < 0 the first token is context only (one score fewer, none
// for a sequence of one token). Sequence i's scores start at the sum of the earlier
// sequences' counts, in order.
//
// Sequences run longest first in groups of up to batch_size, packed like PyTorch's
// PackedSequence: at step t only the group's sequences still running are computed (a
// prefix of the group, since it is sorted), so nothing is spent on padding, and the state
// is carried across chunks of steps so that memory stays bounded for any length.
// stop_requested is polled every few milliseconds (between the stages of each chunk of
// steps); when it returns true the call throws Interrupted, the outputs part-written.
// Writes, per scored token: log_probs (natural log), predictions (the arg-max token) and
// ranks (how many tokens have a larger logit than the target's: the target is in the
// top k when rank < k). scored_count (kernels.h) gives each sequence's count.

// The output layer alone on rows h (N, H) with weight (V, H), bias (V) and targets (N):
// the same three outputs per row. Logits in row chunks, never all at once.
void output_scores(const OutputShape& s, const float* h, const float* weight, const float* bias,
                   const int32_t* targets, const ScoreOutputs& out);

void score_sequences(const LanguageModelView& model, const int32_t* ids, const int64_t* offsets, int64_t count,
                     int32_t bos, int64_t batch_size, const ScoreOutputs& out,
                     const std::function<bool()>& stop_requested);

// batch streams continued from a given state, for reading a long text in pieces with the
// state carried (evaluate): x and y (batch, steps), stream r's inputs and targets; h and c
// (layers, batch, H) the state before its first step, overwritten with the state after its
// last. Writes the three outputs per (stream, step) at r * steps + t. The same arithmetic
// as score_sequences, row for row: one stream of steps tokens gives the scores
// score_sequences gives that sequence when h and c are zero. A batch of one (the exact
// reading of a text) runs chunks of many steps: the input projections and the decoder of
// a chunk are one product each, only the recurrence goes step by step.
void score_streams(const LanguageModelView& model, const int32_t* x, const int32_t* y, int64_t batch,
                   int64_t steps, float* h, float* c, const ScoreOutputs& out,
                   const std::function<bool()>& stop_requested);

// counts (3, vocab), added to: true positives, predictions and targets of each token id,
// so that per-token precision and recall need no vocab x vocab confusion matrix.
void prediction_counts(const int32_t* targets, const int32_t* predictions, int64_t n, int64_t vocab,
                       int64_t* counts);

}  // namespace FASTLM_ISA
}  // namespace fastlm
