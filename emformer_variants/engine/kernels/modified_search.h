// Modified beam search (and greedy search, its beam-1 case) in C++ (modified_search.cpp):
// ``engine.modified.ModifiedBeamSearch._frame`` for N streams in lockstep, on exact mode's
// prefix cache and joiner (exact_search.h).
#pragma once

#include "exact_search.h"
#include "ngram_lm.h"

#include <memory>

class ModifiedSearch : public ExactSearch {
 public:
  // ExactSearch's arguments without step_max_tokens, then max_symbols (symbols per frame, K).
  ModifiedSearch(torch::Tensor table0, std::vector<torch::Tensor> pred_params, std::vector<double> pred_eps,
                 int64_t out_dim, std::vector<torch::Tensor> p2g, std::vector<torch::Tensor> joiner,
                 int64_t symbols, int64_t activation, double temperature, int64_t blank, int64_t beam,
                 int64_t max_symbols, int64_t capacity);

  // As ExactSearch::step; scores are doubles throughout, as the Python search's floats.
  std::vector<std::vector<Out>> step(torch::Tensor enc, const std::vector<int64_t>& handles,
                                     const std::vector<double>& scores, const std::vector<int64_t>& counts,
                                     int64_t keep);

  // Shallow fusion from now on: each round adds NgramFusion::fusion of every hypothesis to its
  // joiner log-probs before the candidates are formed (engine.modified's Python loop does the
  // same). tables, vocab, order, weight, bonus: as NgramFusion takes them; vocab must be the blank.
  void set_lm(const std::vector<torch::Tensor>& tables, int64_t vocab, int64_t order, double weight, double bonus);

  // Selections left to at::topk because of a tie or NaN.
  int64_t fallback_select = 0;

 private:
  struct Cand {
    int64_t slot;    // -1 until the prefix is in the cache
    int64_t parent;  // with token: the prefix when slot is -1
    int64_t token;
    double score;
    int64_t origin;
  };
  // One stream's table of hypotheses by prefix, in insertion order (a Python dict).
  struct Table {
    std::vector<Cand> items;
    // Index of the item holding parent + token (or slot), or -1.
    int64_t find(int64_t slot, int64_t parent, int64_t token) const;
  };

  std::vector<std::vector<Cand>> frame(const torch::Tensor& enc_t, std::vector<std::vector<Cand>> beams);
  // One stream's beam best (score, row, token) of the candidates scores[r] + logp[r, v] (fp32)
  // over its rows offset .. offset + count, best first, as ModifiedBeamSearch._select picks
  // them (width: the most rows of any stream this round, which pads _select's block).
  void select(const torch::Tensor& logp, std::vector<float>& scores, int64_t offset, int64_t count, int64_t width,
              std::vector<std::tuple<float, int64_t, int64_t>>& out);

  int64_t max_symbols_;
  std::unique_ptr<NgramFusion> lm_;
};
