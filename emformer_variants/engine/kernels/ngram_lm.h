// Shallow fusion of a token n-gram LM in C++ (ngram_lm.cpp): ``lm.ngram.NgramLM.probs`` and
// the fusion terms ``engine.modified.ModifiedBeamSearch`` adds to the joiner's log-probs, for
// the fused modified search.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

class NgramFusion {
 public:
  // tables: per order k = 1..order, the five arrays of NgramLM.tables[k - 1] (keys, counts,
  // ctx, totals, distinct; int64). vocab: the LM's symbols (the joiner's blank is symbol
  // ``vocab``, the sentence start). weight, bonus: log P_LM x weight + bonus per symbol.
  NgramFusion(const std::vector<torch::Tensor>& tables, int64_t vocab, int64_t order, double weight, double bonus);

  // P_LM(. | history) into p (vocab doubles): NgramLM.probs for one history, the same doubles
  // (the same operations in the same order, no contraction into fused multiply-adds).
  void probs(const std::vector<int64_t>& history, double* p) const;
  // The fusion row of one history (vocab + 1 floats, blank last): fp32 weight x log P + bonus,
  // 0 for blank, as ``weight * NgramLM.log_probs(...)`` then ``+= bonus`` compute it.
  void fusion(const std::vector<int64_t>& history, float* row) const;

 private:
  struct Order {
    std::vector<int64_t> keys, counts, ctx, totals, distinct;
  };
  static int64_t lookup(const std::vector<int64_t>& keys, const std::vector<int64_t>& values, int64_t key);

  int64_t vocab_, order_, base_;
  float weight_, bonus_;
  std::vector<Order> orders_;
  // Scratch reused by every call (one search calls from one thread): the context symbols and
  // the probabilities of fusion().
  mutable std::vector<int64_t> ctx_tokens_;
  mutable std::vector<double> p_;
};
