// Shallow fusion of a token n-gram LM in C++: see ngram_lm.h. Interpolated Witten-Bell as
// ``lm/ngram.py`` documents it; the keys of the k-grams following one context are contiguous
// in the sorted keys, so a context costs one binary search per order.
#include "ngram_lm.h"

#include <algorithm>
#include <cmath>

NgramFusion::NgramFusion(const std::vector<torch::Tensor>& tables, int64_t vocab, int64_t order, double weight,
                         double bonus)
    : vocab_(vocab), order_(order), base_(vocab + 1), weight_(static_cast<float>(weight)),
      bonus_(static_cast<float>(bonus)) {
  TORCH_CHECK(order >= 1 && static_cast<int64_t>(tables.size()) == 5 * order,
              "NgramFusion: 5 arrays per order expected, got ", tables.size(), " for order ", order);
  for (int64_t k = 0; k < order; ++k) {
    Order o;
    std::vector<int64_t>* fields[] = {&o.keys, &o.counts, &o.ctx, &o.totals, &o.distinct};
    for (int f = 0; f < 5; ++f) {
      auto t = tables[5 * k + f].to(torch::kInt64).contiguous();
      fields[f]->assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
    }
    orders_.push_back(std::move(o));
  }
}

int64_t NgramFusion::lookup(const std::vector<int64_t>& keys, const std::vector<int64_t>& values, int64_t key) {
  const auto it = std::lower_bound(keys.begin(), keys.end(), key);
  return it != keys.end() && *it == key ? values[it - keys.begin()] : 0;
}

// The doubles of numpy's (count + distinct * p) / max(total + distinct, 1): a product and a
// sum rounded separately, never one fused multiply-add.
__attribute__((optimize("fp-contract=off"))) void NgramFusion::probs(const std::vector<int64_t>& history,
                                                                     double* p) const {
  const int64_t n = order_, ctx_len = n - 1;
  auto& ctx_tokens = ctx_tokens_;
  ctx_tokens.assign(std::max<int64_t>(ctx_len, 0), vocab_);
  if (ctx_len > 0) {  // the last n - 1 symbols that are not the blank, right-aligned
    int64_t j = ctx_len - 1;
    for (auto it = history.rbegin(); it != history.rend() && j >= 0; ++it)
      if (*it != vocab_) ctx_tokens[j--] = *it;
  }
  for (int64_t v = 0; v < vocab_; ++v) p[v] = 1.0 / static_cast<double>(vocab_);
  int64_t ctx = 0, scale = 1;
  for (int64_t k = 1; k <= n; ++k) {
    const Order& t = orders_[k - 1];
    if (k > 1) {
      ctx += ctx_tokens[n - k] * scale;
      scale *= base_;
    }
    const double total = static_cast<double>(lookup(t.ctx, t.totals, ctx));
    if (!(total > 0)) continue;  // an unseen context passes the lower order through
    const double distinct = static_cast<double>(lookup(t.ctx, t.distinct, ctx));
    const double denom = std::max(total + distinct, 1.0);
    const int64_t first = ctx * base_;
    auto it = std::lower_bound(t.keys.begin(), t.keys.end(), first);
    for (int64_t v = 0; v < vocab_; ++v) {
      int64_t count = 0;
      if (it != t.keys.end() && *it == first + v) {
        count = t.counts[it - t.keys.begin()];
        ++it;
      }
      const double spread = distinct * p[v];
      const double num = static_cast<double>(count) + spread;
      p[v] = num / denom;
    }
  }
}

__attribute__((optimize("fp-contract=off"))) void NgramFusion::fusion(const std::vector<int64_t>& history,
                                                                      float* row) const {
  p_.resize(vocab_);
  probs(history, p_.data());
  for (int64_t v = 0; v < vocab_; ++v) {
    const float scaled = weight_ * static_cast<float>(std::log(p_[v]));
    row[v] = bonus_ != 0.0f ? scaled + bonus_ : scaled;
  }
  row[vocab_] = 0.0f;  // the blank emits nothing
}
