// Modified beam search in C++: ``engine.modified.ModifiedBeamSearch._frame`` statement for
// statement, on exact mode's prefix cache and joiner. Scores are doubles (the Python search's
// floats), candidates fp32 sums of the rounded score and the log-prob (the bits
// ``torch.tensor(scores).unsqueeze(1) + logp`` gives), merges log-add-exp in double, rankings
// stable sorts as Python's ``sorted``. Each stream's pick is its beam best candidates, found
// in one pass unless a tie or NaN makes the order depend on how ties break (then at::topk,
// per row and over the rows' best, as ``_select`` does). So the beams are the Python search's,
// bit for bit, except where a tie among the candidates is broken differently.
#include "modified_search.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace {

double log_add(double a, double b) {  // engine.modified.log_add
  const double hi = a >= b ? a : b, lo = a >= b ? b : a;
  return hi + std::log1p(std::exp(lo - hi));
}

}  // namespace

ModifiedSearch::ModifiedSearch(torch::Tensor table0, std::vector<torch::Tensor> pred_params,
                               std::vector<double> pred_eps, int64_t out_dim, std::vector<torch::Tensor> p2g,
                               std::vector<torch::Tensor> joiner, int64_t symbols, int64_t activation,
                               double temperature, int64_t blank, int64_t beam, int64_t max_symbols,
                               int64_t capacity)
    : ExactSearch(std::move(table0), std::move(pred_params), std::move(pred_eps), out_dim, std::move(p2g),
                  std::move(joiner), symbols, activation, temperature, blank, beam, 1, capacity),
      max_symbols_(max_symbols) {
  TORCH_CHECK(max_symbols >= 1, "ModifiedSearch: max_symbols must be at least 1");
}

void ModifiedSearch::set_lm(const std::vector<torch::Tensor>& tables, int64_t vocab, int64_t order, double weight,
                            double bonus) {
  TORCH_CHECK(vocab == blank_ && vocab + 1 == symbols_, "ModifiedSearch.set_lm: the LM's ", vocab,
              " symbols must be the joiner's ", symbols_, " without its blank (", blank_, ", the last)");
  lm_ = std::make_unique<NgramFusion>(tables, vocab, order, weight, bonus);
}

int64_t ModifiedSearch::Table::find(int64_t slot, int64_t parent, int64_t token) const {
  for (size_t i = 0; i < items.size(); ++i) {
    const Cand& c = items[i];
    if (slot >= 0 ? c.slot == slot : (c.slot < 0 && c.parent == parent && c.token == token))
      return static_cast<int64_t>(i);
  }
  return -1;
}

void ModifiedSearch::select(const torch::Tensor& logp, std::vector<float>& scores, int64_t offset, int64_t count,
                            int64_t width, std::vector<std::tuple<float, int64_t, int64_t>>& out) {
  const int64_t vocab = symbols_, k = std::min<int64_t>(beam_, count * vocab);
  out.clear();
  std::vector<Scored> top;
  if (top_k_distinct(logp.data_ptr<float>() + offset * vocab, vocab, scores.data() + offset, count, vocab, k, top)) {
    for (const auto& [value, idx] : top) out.emplace_back(value, offset + idx / vocab, idx % vocab);
    return;
  }
  fallback_select += 1;  // _select: each row's best, then the best of those (padded to width rows)
  const int64_t kr = std::min<int64_t>(beam_, vocab);
  // the candidates score + logp of this stream's rows: the same fp32 sums top_k_distinct forms
  auto cand = torch::from_blob(scores.data() + offset, {count, 1}, torch::kFloat32) + logp.narrow(0, offset, count);
  auto [row_best, row_tok] = cand.topk(kr, 1);
  row_tok = row_tok.contiguous();
  torch::Tensor best, idx;
  if (width == 1) {  // every stream has one row: its best are the pick
    best = row_best.reshape(-1);
    idx = torch::arange(kr);
  } else {
    auto block = torch::full({width * kr}, -std::numeric_limits<float>::infinity());
    block.narrow(0, 0, count * kr).copy_(row_best.reshape(-1));
    std::tie(best, idx) = block.topk(std::min<int64_t>(beam_, width * kr));
  }
  best = best.contiguous();
  idx = idx.contiguous();
  for (int64_t j = 0; j < best.numel(); ++j) {
    const int64_t i = idx.data_ptr<int64_t>()[j];
    if (i >= count * kr) {  // padding (-inf): the caller's floor stops there
      out.emplace_back(best.data_ptr<float>()[j], offset, blank_);
      continue;
    }
    out.emplace_back(best.data_ptr<float>()[j], offset + i / kr, row_tok.data_ptr<int64_t>()[i]);
  }
}

std::vector<std::vector<ModifiedSearch::Cand>> ModifiedSearch::frame(const torch::Tensor& enc_t,
                                                                     std::vector<std::vector<Cand>> current) {
  const int64_t n = static_cast<int64_t>(current.size());
  std::vector<Table> ended(n);  // the next frame's candidates
  std::vector<std::tuple<float, int64_t, int64_t>> picks;
  for (int64_t rnd = 0; rnd < max_symbols_; ++rnd) {
    const bool last = rnd == max_symbols_ - 1;
    std::vector<int64_t> keep, counts, slots;
    std::vector<const Cand*> flat;
    std::vector<float> scores;
    for (int64_t s = 0; s < n; ++s) {
      if (current[s].empty()) continue;
      keep.push_back(s);
      counts.push_back(static_cast<int64_t>(current[s].size()));
      for (const auto& h : current[s]) {
        flat.push_back(&h);
        slots.push_back(h.slot);
        scores.push_back(static_cast<float>(h.score));
      }
    }
    if (flat.empty()) break;
    auto logp = join(enc_t, keep, counts, slots);  // (R, V)
    if (lm_) {  // shallow fusion: logp + the LM's row of each hypothesis (fp32 sums, as in Python)
      auto fusion = torch::empty_like(logp);
      float* f = fusion.data_ptr<float>();
      for (size_t r = 0; r < slots.size(); ++r) lm_->fusion(tokens_[slots[r]], f + r * symbols_);
      logp = logp + fusion;
    }
    const int64_t width = *std::max_element(counts.begin(), counts.end());  // rows of the largest beam

    std::vector<Table> extended(n);
    // pending prefixes: parent slot, token, and where the candidate waits (stream, in ended?, index)
    std::vector<int64_t> parents, tokens;
    std::vector<std::tuple<int64_t, bool, int64_t>> where;
    int64_t offset = 0;
    for (size_t q = 0; q < keep.size(); ++q) {
      const int64_t s = keep[q];
      select(logp, scores, offset, counts[q], width, picks);
      offset += counts[q];
      double floor = -std::numeric_limits<double>::infinity();
      auto& done = ended[s].items;
      if (rnd && static_cast<int64_t>(done.size()) >= beam_) {
        std::vector<double> v;
        for (const auto& c : done) v.push_back(c.score);
        std::nth_element(v.begin(), v.begin() + (beam_ - 1), v.end(), std::greater<double>());
        floor = v[beam_ - 1];
      }
      for (const auto& [value, row, token] : picks) {
        const double score = static_cast<double>(value);
        if (score <= floor) break;
        const Cand& parent = *flat[row];
        if (token == blank_) {
          const int64_t i = ended[s].find(parent.slot, -1, -1);
          if (i >= 0) done[i].score = log_add(done[i].score, score);
          else done.push_back({parent.slot, parent.slot, -1, score, parent.origin});
          continue;
        }
        Table& table = last ? ended[s] : extended[s];
        const int64_t known = ExactSearch::find(parent.slot, token);
        const int64_t i = table.find(known, parent.slot, token);
        if (i >= 0) {
          table.items[i].score = log_add(table.items[i].score, score);
          continue;
        }
        table.items.push_back({known, parent.slot, token, score, parent.origin});
        parents.push_back(parent.slot);
        tokens.push_back(token);
        where.emplace_back(s, last, static_cast<int64_t>(table.items.size()) - 1);
      }
    }
    if (!parents.empty()) {
      const auto fresh = extend(parents, tokens);
      for (size_t j = 0; j < fresh.size(); ++j) {
        const auto& [s, in_ended, i] = where[j];
        (in_ended ? ended[s] : extended[s]).items[i].slot = fresh[j];
      }
    }
    for (int64_t s = 0; s < n; ++s) current[s] = std::move(extended[s].items);
  }
  std::vector<std::vector<Cand>> out(n);
  for (int64_t s = 0; s < n; ++s) {
    auto& items = ended[s].items;
    std::stable_sort(items.begin(), items.end(), [](const Cand& a, const Cand& b) { return a.score > b.score; });
    if (static_cast<int64_t>(items.size()) > beam_) items.resize(beam_);
    auto key = [this](const Cand& c) { return c.score / static_cast<double>(tokens_[c.slot].size() + 1); };
    std::stable_sort(items.begin(), items.end(), [&](const Cand& a, const Cand& b) { return key(a) > key(b); });
    out[s] = std::move(items);
  }
  return out;
}

std::vector<std::vector<ExactSearch::Out>> ModifiedSearch::step(torch::Tensor enc,
                                                                const std::vector<int64_t>& handles,
                                                                const std::vector<double>& scores,
                                                                const std::vector<int64_t>& counts,
                                                                int64_t keep) {
  return run_chunk<Cand>(
      "ModifiedSearch.step", std::move(enc), handles, scores, counts, keep,
      [](int64_t slot, double score, int64_t i) { return Cand{slot, slot, -1, score, i}; },
      [this](const torch::Tensor& enc_t, std::vector<std::vector<Cand>> a) { return frame(enc_t, std::move(a)); });
}
