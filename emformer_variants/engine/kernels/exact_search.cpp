// Exact mode's search loop in C++: ``engine.exact.ExactBeamSearch._frame`` and the prefix
// cache of ``engine.predictor.PrefixCache``, statement for statement. Every value that ranks
// hypotheses comes from the same ATen op on the same fp32 tensor as in Python (topk, sort,
// log-add-exp, log_softmax), and the joiner and predictor run the same kernels on the same
// rows in the same order, so the beams are the Python search's, bit for bit. What goes is
// the interpreter: Python objects, dict lookups keyed by token tuples, and a few dozen
// small tensor ops per expansion round.
//
// Prefixes live in slots (the rows of out_, h_, c_, pg_) and are found by their token
// sequence (a rolling hash, then a full compare). A prefix's handle is a number never
// reused, so a beam kept past its prefixes' release is detected, not misread.
#include "exact_search.h"
#include "linears.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

namespace {

uint64_t mix(uint64_t h, int64_t token) {  // splitmix64 of the parent's hash and the token
  uint64_t z = h ^ (static_cast<uint64_t>(token) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

torch::Tensor index(const std::vector<int64_t>& v) {
  return torch::tensor(v, torch::kInt64);
}

// t.index_select(dim, idx) and t.index_copy_(dim, idx, src) for the cache's contiguous fp32
// tensors, as row copies: the same values without ATen's index kernels (a TensorIterator per
// call, slow along dim 1).
torch::Tensor gather(const torch::Tensor& t, int64_t dim, const std::vector<int64_t>& idx) {
  const int64_t outer = t.numel() / (t.size(dim) * t.stride(dim)), rows = t.size(dim), width = t.stride(dim);
  auto shape = t.sizes().vec();
  shape[dim] = static_cast<int64_t>(idx.size());
  auto out = torch::empty(shape, t.options());
  const float* src = t.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i : idx) {
      std::memcpy(dst, src + (o * rows + i) * width, width * sizeof(float));
      dst += width;
    }
  return out;
}

void scatter(torch::Tensor& t, int64_t dim, const std::vector<int64_t>& idx, const torch::Tensor& values) {
  const auto src = values.contiguous();
  TORCH_CHECK(src.numel() == t.numel() / t.size(dim) * static_cast<int64_t>(idx.size()),
              "exact_search: scatter shape");
  const int64_t outer = t.numel() / (t.size(dim) * t.stride(dim)), rows = t.size(dim), width = t.stride(dim);
  const float* from = src.data_ptr<float>();
  float* base = t.data_ptr<float>();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i : idx) {
      std::memcpy(base + (o * rows + i) * width, from, width * sizeof(float));
      from += width;
    }
}

// Visits score[r] + logp[r, v] (the fp32 sums ``scores.unsqueeze(1) + logp`` gives) for rows
// r < count and v < width in flat order, r * width + v: the first ``first`` values all go to
// ``take``; after them only the values above ``floor()``, 8 per compare (``take`` sees every
// candidate and keeps its own order). Returns false when a value is NaN.
template <class Floor, class Take>
bool scan_above(const float* logp, int64_t ld, const float* scores, int64_t count, int64_t width,
                int64_t first, Floor floor, Take take) {
  __m256 nan = _mm256_setzero_ps();
  bool scalar_nan = false;
  int64_t seen = 0;
  for (int64_t r = 0; r < count; ++r) {
    const float* row = logp + r * ld;
    const float base = scores[r];
    int64_t v = 0;
    for (; v < width && seen < first; ++v, ++seen) {
      const float x = base + row[v];
      scalar_nan |= x != x;
      take(x, r * width + v);
    }
    const __m256 b = _mm256_set1_ps(base);
    for (; v + 8 <= width; v += 8) {
      const __m256 x = _mm256_add_ps(b, _mm256_loadu_ps(row + v));
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
      int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(floor()), _CMP_GT_OQ));
      while (mask) {
        const int lane = __builtin_ctz(mask);
        mask &= mask - 1;
        take(base + row[v + lane], r * width + v + lane);
      }
    }
    for (; v < width; ++v) {
      const float x = base + row[v];
      scalar_nan |= x != x;
      take(x, r * width + v);
    }
  }
  return !(scalar_nan || _mm256_movemask_ps(nan));
}

}  // namespace

bool top_k_distinct(const float* logp, int64_t ld, const float* scores, int64_t count, int64_t width,
                    int64_t k, std::vector<Scored>& top) {
  const int64_t keep = std::min(k + 1, count * width);
  top.clear();
  auto insert = [&](float value, int64_t idx) {
    if (static_cast<int64_t>(top.size()) == keep) {
      if (!(value > top.back().first)) return;
      top.pop_back();
    }
    auto pos = std::upper_bound(top.begin(), top.end(), value,
                                [](float v, const Scored& e) { return v > e.first; });
    top.insert(pos, {value, idx});
  };
  if (!scan_above(logp, ld, scores, count, width, keep, [&] { return top.back().first; }, insert)) return false;
  for (size_t i = 1; i < top.size(); ++i)
    if (!(top[i - 1].first > top[i].first)) return false;
  top.resize(std::min<size_t>(top.size(), static_cast<size_t>(k)));
  return true;
}

bool top_k_heap(const float* logp, int64_t ld, const float* scores, int64_t count, int64_t width, int64_t k,
                std::vector<Scored>& top) {
  if (k <= 0 || k * 64 > count * width) return false;
  // at::topk's comparator, largest first; a NaN leaves the work to at::topk, so plain ">" here
  auto before = [](const Scored& x, const Scored& y) { return x.first > y.first; };
  top.assign(static_cast<size_t>(k) + 1, Scored{0.f, 0});  // [0, k): the heap; [k]: the entry coming in
  Scored* heap = top.data();
  int64_t filled = 0;
  auto take = [&](float x, int64_t idx) {
    if (filled < k) {  // the first k entries, then the heap
      heap[filled++] = {x, idx};
      if (filled == k) std::make_heap(heap, heap + k, before);
    } else if (x > heap[0].first) {  // std::__heap_select's step: x replaces the top
      heap[k] = {x, idx};
      std::pop_heap(heap, heap + k + 1, before);
    }
  };
  if (!scan_above(logp, ld, scores, count, width, k, [&] { return heap[0].first; }, take)) return false;
  std::sort_heap(heap, heap + k, before);
  top.resize(static_cast<size_t>(k));
  return true;
}

// Indices of the k largest keys, largest first, as ``torch.tensor(keys).topk(k)`` gives them:
// std::partial_sort when the answer is unique (no NaN, no two equal keys among the k + 1
// largest), else ATen's topk, so ties break as torch's do.
static std::vector<int64_t> top_indices(std::vector<float>& keys, int64_t k) {
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<int64_t> order(n);
  for (int64_t j = 0; j < n; ++j) order[j] = j;
  bool unique = std::none_of(keys.begin(), keys.end(), [](float v) { return v != v; });
  if (unique) {
    const int64_t m = std::min(k + 1, n);
    std::partial_sort(order.begin(), order.begin() + m, order.end(),
                      [&](int64_t i, int64_t j) { return keys[i] > keys[j]; });
    for (int64_t j = 1; j < m; ++j) unique &= keys[order[j - 1]] > keys[order[j]];
  }
  if (unique) {
    order.resize(k);
    return order;
  }
  auto idx = std::get<1>(torch::from_blob(keys.data(), {n}, torch::kFloat32).topk(k)).contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  return std::vector<int64_t>(ip, ip + k);
}

// b by score, ascending, as ``torch.tensor(scores).sort()`` orders it: std::sort when the
// order is unique (no two equal scores, no NaN), else ATen's sort, so ties break as torch's do.
void ExactSearch::sort_ascending(std::vector<Hyp>& b) {
  std::vector<int64_t> order(b.size());
  for (size_t j = 0; j < b.size(); ++j) order[j] = static_cast<int64_t>(j);
  bool unique = std::none_of(b.begin(), b.end(), [](const Hyp& h) { return h.score != h.score; });
  if (unique) {  // no NaN: a strict weak order for std::sort
    std::sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return b[i].score < b[j].score; });
    for (size_t j = 1; j < order.size(); ++j) unique &= b[order[j - 1]].score < b[order[j]].score;
  }
  if (!unique) {
    std::vector<float> scores;
    for (const auto& h : b) scores.push_back(h.score);
    auto idx = std::get<1>(
        torch::from_blob(scores.data(), {static_cast<int64_t>(scores.size())}, torch::kFloat32).sort());
    const int64_t* op = idx.data_ptr<int64_t>();
    for (size_t j = 0; j < b.size(); ++j) order[j] = op[j];
    fallback_sort += 1;
  }
  std::vector<Hyp> sorted;
  sorted.reserve(b.size());
  for (int64_t j : order) sorted.push_back(b[j]);
  b.swap(sorted);
}

ExactSearch::ExactSearch(torch::Tensor table0, std::vector<torch::Tensor> pred_params,
                         std::vector<double> pred_eps, int64_t out_dim, std::vector<torch::Tensor> p2g,
                         std::vector<torch::Tensor> joiner, int64_t symbols, int64_t activation,
                         double temperature, int64_t blank, int64_t beam, int64_t step_max_tokens,
                         int64_t capacity)
    : table0_(std::move(table0)),
      pred_params_(std::move(pred_params)),
      p2g_(std::move(p2g)),
      joiner_(std::move(joiner)),
      pred_eps_(std::move(pred_eps)),
      out_dim_(out_dim),
      symbols_(symbols),
      activation_(activation),
      blank_(blank),
      beam_(beam),
      step_max_tokens_(step_max_tokens),
      layers_(static_cast<int64_t>(p2g_.size()) / 4),
      hidden_(table0_.size(1) / 4),
      temperature_(temperature) {
  TORCH_CHECK(static_cast<int64_t>(p2g_.size()) == 4 * layers_ && layers_ > 0 && joiner_.size() == 4,
              "ExactSearch: expected 4 tensors per p2g linear and 4 for the joiner");
  TORCH_CHECK(activation_ == 0 || activation_ == 1, "ExactSearch: activation must be 0 (ReLU) or 1 (tanh)");
  out_ = torch::zeros({capacity, out_dim_});
  h_ = torch::zeros({layers_, capacity, hidden_});
  c_ = torch::zeros({layers_, capacity, hidden_});
  pg_ = torch::zeros({layers_, capacity, 4 * hidden_});
  tokens_.resize(capacity);
  hash_.resize(capacity);
  handle_.assign(capacity, -1);
  last_used_.assign(capacity, 0);
  gates_ready_.assign(capacity, 0);
  used_.assign(capacity, 0);
  for (int64_t s = capacity - 1; s >= 0; --s) free_.push_back(s);
}

void ExactSearch::grow(int64_t need) {
  const int64_t old = capacity(), extra = std::max(old, need);
  auto more = [extra](const torch::Tensor& t, int64_t dim) {
    auto shape = t.sizes().vec();
    shape[dim] = extra;
    return torch::cat({t, t.new_zeros(shape)}, dim);
  };
  out_ = more(out_, 0);
  h_ = more(h_, 1);
  c_ = more(c_, 1);
  pg_ = more(pg_, 1);
  tokens_.resize(old + extra);
  hash_.resize(old + extra);
  handle_.resize(old + extra, -1);
  last_used_.resize(old + extra, 0);
  gates_ready_.resize(old + extra, 0);
  used_.resize(old + extra, 0);
  std::vector<int64_t> added;  // popped after the old free slots, as PrefixCache._grow
  for (int64_t s = old + extra - 1; s >= old; --s) added.push_back(s);
  free_.insert(free_.begin(), added.begin(), added.end());
}

std::vector<int64_t> ExactSearch::alloc(int64_t n) {
  if (static_cast<int64_t>(free_.size()) < n) grow(n - static_cast<int64_t>(free_.size()));
  std::vector<int64_t> slots;
  for (int64_t i = 0; i < n; ++i) {
    slots.push_back(free_.back());
    free_.pop_back();
  }
  return slots;
}

// parent -1: the empty prefix (the root's parent).
int64_t ExactSearch::find(int64_t parent, int64_t token) const {
  static const std::vector<int64_t> empty;
  const auto& pt = parent < 0 ? empty : tokens_[parent];
  auto range = by_hash_.equal_range(mix(parent < 0 ? 0 : hash_[parent], token));
  for (auto it = range.first; it != range.second; ++it) {
    const auto& t = tokens_[it->second];
    if (t.size() == pt.size() + 1 && t.back() == token && std::equal(pt.begin(), pt.end(), t.begin()))
      return it->second;
  }
  return -1;
}

void ExactSearch::add_prefix(int64_t slot, int64_t parent, int64_t token) {
  tokens_[slot] = parent < 0 ? std::vector<int64_t>() : tokens_[parent];
  tokens_[slot].push_back(token);
  hash_[slot] = mix(parent < 0 ? 0 : hash_[parent], token);
  handle_[slot] = next_handle_++;
  gates_ready_[slot] = 0;
  used_[slot] = 1;
  by_hash_.emplace(hash_[slot], slot);
  slot_of_handle_[handle_[slot]] = slot;
}

torch::Tensor ExactSearch::layer_gates(const torch::Tensor& h, int64_t i) {
  gate_rows += h.size(0);
  return kernel_linear(h, p2g_.data() + 4 * i, 4 * hidden_);
}

torch::Tensor ExactSearch::recurrent_gates(const torch::Tensor& h) {
  std::vector<torch::Tensor> gates;
  for (int64_t i = 0; i < layers_; ++i) gates.push_back(layer_gates(h[i], i));
  return torch::stack(gates);
}

void ExactSearch::store(const std::vector<int64_t>& slots, const std::vector<torch::Tensor>& res) {
  scatter(out_, 0, slots, res[0]);
  scatter(h_, 1, slots, res[1]);
  scatter(c_, 1, slots, res[2]);
  predictor_rows += static_cast<int64_t>(slots.size());
  computed += static_cast<int64_t>(slots.size());
}

int64_t ExactSearch::root() {
  int64_t slot = find(-1, blank_);
  if (slot < 0) {
    auto zeros = torch::zeros({layers_, 1, hidden_});
    auto res = predictor_step(index({blank_}), recurrent_gates(zeros), zeros, table0_, pred_params_,
                              pred_eps_, out_dim_);
    slot = alloc(1)[0];
    store({slot}, res);
    add_prefix(slot, -1, blank_);
  }
  touch(slot);
  return handle_[slot];
}

bool ExactSearch::live(const std::vector<int64_t>& handles) const {
  for (int64_t h : handles)
    if (!slot_of_handle_.count(h)) return false;
  return true;
}

void ExactSearch::ensure_gates(const std::vector<int64_t>& parents) {
  std::vector<int64_t> todo;
  for (int64_t p : parents)
    if (!gates_ready_[p]) todo.push_back(p);
  std::sort(todo.begin(), todo.end());
  todo.erase(std::unique(todo.begin(), todo.end()), todo.end());
  if (todo.empty()) return;
  RECORD_FUNCTION("exact_search:gates", std::vector<c10::IValue>());
  // each layer's gates straight into its rows of pg_ (recurrent_gates without the stack)
  const auto h = gather(h_, 1, todo);
  for (int64_t i = 0; i < layers_; ++i) {
    auto rows = pg_.narrow(0, i, 1);
    scatter(rows, 1, todo, layer_gates(h[i], i).unsqueeze(0));
  }
  for (int64_t p : todo) gates_ready_[p] = 1;
}

std::vector<int64_t> ExactSearch::extend(const std::vector<int64_t>& parents,
                                         const std::vector<int64_t>& tokens) {
  const size_t m = parents.size();
  std::vector<int64_t> slots(m, -1);
  std::vector<size_t> first;  // requests whose prefix is missing, first request of each
  for (size_t i = 0; i < m; ++i) {
    slots[i] = find(parents[i], tokens[i]);
    if (slots[i] >= 0) continue;
    bool dup = false;
    for (size_t j : first)
      if (parents[j] == parents[i] && tokens[j] == tokens[i]) dup = true;
    if (!dup) first.push_back(i);
  }
  hits += static_cast<int64_t>(m - first.size());
  if (!first.empty()) {
    std::vector<int64_t> par, tok;
    for (size_t i : first) {
      par.push_back(parents[i]);
      tok.push_back(tokens[i]);
    }
    ensure_gates(par);
    RECORD_FUNCTION("exact_search:predictor", std::vector<c10::IValue>());
    auto fresh = alloc(static_cast<int64_t>(first.size()));
    store(fresh, predictor_step(index(tok), gather(pg_, 1, par), gather(c_, 1, par), table0_,
                                pred_params_, pred_eps_, out_dim_));
    for (size_t k = 0; k < first.size(); ++k) add_prefix(fresh[k], par[k], tok[k]);
    for (size_t i = 0; i < m; ++i)
      if (slots[i] < 0) slots[i] = find(parents[i], tokens[i]);
  }
  for (int64_t s : slots) touch(s);
  return slots;
}

void ExactSearch::release_stale(int64_t keep) {
  // PrefixCache frees in its dict's order, which is creation order: ascending handles.
  const int64_t limit = tick_ - keep;
  std::vector<std::pair<int64_t, int64_t>> stale;  // (handle, slot)
  for (int64_t s = 0; s < capacity(); ++s)
    if (used_[s] && last_used_[s] < limit) stale.emplace_back(handle_[s], s);
  std::sort(stale.begin(), stale.end());
  for (auto [handle, s] : stale) {
    auto range = by_hash_.equal_range(hash_[s]);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second == s) {
        by_hash_.erase(it);
        break;
      }
    slot_of_handle_.erase(handle);
    tokens_[s].clear();
    handle_[s] = -1;
    used_[s] = 0;
    gates_ready_[s] = 0;
    free_.push_back(s);
  }
  tick_ += 1;
}

torch::Tensor ExactSearch::join(const torch::Tensor& enc_t, const std::vector<int64_t>& active,
                                const std::vector<int64_t>& counts, const std::vector<int64_t>& slots) {
  const int64_t rows = static_cast<int64_t>(slots.size()), d = out_.size(1);
  TORCH_CHECK(enc_t.scalar_type() == torch::kFloat && enc_t.size(1) == d && enc_t.stride(1) == 1,
              "exact_search: encoder frame (N, D) fp32");
  int64_t counted = 0;
  for (int64_t c : counts) counted += c;
  TORCH_CHECK(counted == rows && counts.size() == active.size(),
              "exact_search: joiner rows do not match the streams' counts");  // before any row is written
  RECORD_FUNCTION("exact_search:joiner", std::vector<c10::IValue>());
  // x = enc + pred, ReLU'd, in one pass over the rows (the same fp32 add as ATen's; ReLU keeps
  // NaN and sends the rest at or below 0 to +0); tanh runs after, as engine.joiner.JoinerStep
  auto x = torch::empty({rows, d}, out_.options());
  float* xp = x.data_ptr<float>();
  const float* cache = out_.data_ptr<float>();
  const float* ep = enc_t.data_ptr<float>();
  int64_t r = 0;
  for (size_t k = 0; k < active.size(); ++k) {
    const float* e = ep + active[k] * enc_t.stride(0);  // stream active[k]'s frame, for its rows
    for (int64_t c = 0; c < counts[k]; ++c, ++r) {
      const float* p = cache + slots[r] * d;
      float* xr = xp + r * d;
      if (activation_ == 0) {
        for (int64_t j = 0; j < d; ++j) {
          const float v = e[j] + p[j];
          xr[j] = v > 0.f || v != v ? v : 0.f;
        }
      } else {
        for (int64_t j = 0; j < d; ++j) xr[j] = e[j] + p[j];
      }
    }
  }
  if (activation_ == 1) x = fast_tanh(x);
  auto logits = kernel_linear(x, joiner_.data(), symbols_);
  if (temperature_ != 1.0) logits = logits / temperature_;
  joiner_rows += rows;
  return at::log_softmax(logits, -1);
}

std::vector<std::vector<ExactSearch::Hyp>> ExactSearch::frame(const torch::Tensor& enc_t,
                                                              std::vector<std::vector<Hyp>> a) {
  const int64_t n = static_cast<int64_t>(a.size());
  std::vector<std::vector<Hyp>> b(n);
  std::vector<int64_t> symbols(n, 0), active;
  for (int64_t s = 0; s < n; ++s) active.push_back(s);
  while (!active.empty()) {
    std::vector<float> flat;
    for (int64_t s : active)
      for (const auto& h : a[s]) flat.push_back(h.score);
    std::vector<int64_t> counts, slots;
    for (int64_t s : active) {
      counts.push_back(static_cast<int64_t>(a[s].size()));
      for (const auto& h : a[s]) slots.push_back(h.slot);
    }
    auto logp = join(enc_t, active, counts, slots);  // (R, V)
    const float* lp = logp.data_ptr<float>();
    const int64_t width = symbols_ - 1;  // the blank is the last column
    std::vector<Scored> top;

    int64_t offset = 0;
    std::vector<int64_t> parents, tokens, owners, origins;
    std::vector<float> new_scores;
    for (int64_t s : active) {
      const int64_t count = static_cast<int64_t>(a[s].size());
      // torchaudio's _gen_b_hypos: a + blank joins b, merging equal prefixes by log-add-exp.
      auto& bs = b[s];
      for (int64_t i = 0; i < count; ++i) {
        float blank_score = flat[offset + i] + lp[(offset + i) * symbols_ + width];
        const Hyp& ha = a[s][i];
        for (size_t j = 0; j < bs.size(); ++j)
          if (bs[j].slot == ha.slot) {
            blank_score = at::logaddexp(torch::scalar_tensor(bs[j].score, torch::kFloat32),
                                        torch::scalar_tensor(blank_score, torch::kFloat32))
                              .item<float>();
            bs.erase(bs.begin() + static_cast<int64_t>(j));
            break;
          }
        bs.push_back({ha.slot, blank_score, ha.origin});
      }
      sort_ascending(bs);

      if (symbols[s] != step_max_tokens_) {
        const int64_t k = std::min<int64_t>(beam_, count * width);
        const float* block_lp = lp + offset * symbols_;
        float* block_scores = flat.data() + offset;
        bool done = top_k_distinct(block_lp, symbols_, block_scores, count, width, k, top);
        if (!done && top_k_heap(block_lp, symbols_, block_scores, count, width, k, top)) {
          done = true;
          heap_topk += 1;
        }
        if (!done) {
          auto scores = torch::from_blob(block_scores, {count}, torch::kFloat32);
          auto block = (scores.unsqueeze(1) + logp.narrow(0, offset, count).narrow(1, 0, width)).reshape(-1);
          auto res = block.topk(k);
          auto values = std::get<0>(res).contiguous(), idx = std::get<1>(res).contiguous();
          top.clear();
          for (int64_t j = 0; j < k; ++j) top.emplace_back(values.data_ptr<float>()[j], idx.data_ptr<int64_t>()[j]);
          fallback_topk += 1;
        }
        const float threshold = static_cast<int64_t>(bs.size()) < beam_
                                    ? -std::numeric_limits<float>::infinity()
                                    : bs[bs.size() - beam_].score;
        for (const auto& [score, idx] : top)
          if (score > threshold) {
            const Hyp& parent = a[s][idx / width];
            parents.push_back(parent.slot);
            tokens.push_back(idx % width);
            origins.push_back(parent.origin);
            new_scores.push_back(score);
            owners.push_back(s);
          }
      }
      a[s].clear();
      offset += count;
    }
    if (!parents.empty()) {
      auto slots = extend(parents, tokens);
      for (size_t i = 0; i < slots.size(); ++i) a[owners[i]].push_back({slots[i], new_scores[i], origins[i]});
    }
    std::vector<int64_t> still;
    for (int64_t s : active)
      if (!a[s].empty()) {
        symbols[s] += 1;
        still.push_back(s);
      }
    active.swap(still);
  }

  std::vector<std::vector<Hyp>> out(n);
  for (int64_t s = 0; s < n; ++s) {
    std::vector<float> keys;  // torchaudio's score / (tokens + 1), in double, then fp32
    for (const auto& h : b[s])
      keys.push_back(static_cast<float>(static_cast<double>(h.score) /
                                        static_cast<double>(tokens_[h.slot].size() + 1)));
    for (int64_t j : top_indices(keys, std::min<int64_t>(beam_, static_cast<int64_t>(keys.size()))))
      out[s].push_back(b[s][j]);
  }
  return out;
}

std::vector<int64_t> ExactSearch::input_slots(const std::vector<int64_t>& handles, const char* who) {
  std::vector<int64_t> slots;
  slots.reserve(handles.size());
  for (int64_t h : handles) {
    auto it = slot_of_handle_.find(h);
    TORCH_CHECK(it != slot_of_handle_.end(), who, ": stale handle ", h);
    slots.push_back(it->second);
    touch(it->second);
  }
  return slots;
}

ExactSearch::Out ExactSearch::output(int64_t slot, double score, int64_t origin, size_t origin_len) {
  touch(slot);
  const auto& t = tokens_[slot];
  return {origin, handle_[slot], score, std::vector<int64_t>(t.begin() + static_cast<int64_t>(origin_len), t.end())};
}

std::vector<std::vector<ExactSearch::Out>> ExactSearch::step(torch::Tensor enc,
                                                             const std::vector<int64_t>& handles,
                                                             const std::vector<double>& scores,
                                                             const std::vector<int64_t>& counts,
                                                             int64_t keep) {
  return run_chunk<Hyp>(
      "ExactSearch.step", std::move(enc), handles, scores, counts, keep,
      [](int64_t slot, double score, int64_t i) { return Hyp{slot, static_cast<float>(score), i}; },
      [this](const torch::Tensor& enc_t, std::vector<std::vector<Hyp>> a) { return frame(enc_t, std::move(a)); });
}

std::vector<std::tuple<std::vector<int64_t>, int64_t>> ExactSearch::prefixes() const {
  std::vector<std::tuple<std::vector<int64_t>, int64_t>> result;
  for (int64_t s = 0; s < static_cast<int64_t>(used_.size()); ++s)
    if (used_[s]) result.emplace_back(tokens_[s], handle_[s]);
  return result;
}
