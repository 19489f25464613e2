// Exact mode's search loop in C++ (exact_search.cpp): torchaudio's RNNTBeamSearch per frame,
// as ``engine.exact.ExactBeamSearch._frame`` runs it, with the prefix cache of
// ``engine.predictor.PrefixCache``, for N streams in lockstep.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

using Scored = std::pair<float, int64_t>;  // (value, flat index)

// The k largest of score[r] + logp[r, v] over ``count`` rows (row stride ld) and v < width,
// flat index r * width + v, into ``top`` in descending order: one pass keeping the k + 1
// largest, 8 values per compare. The fp32 sums are the bits ``scores.unsqueeze(1) + logp``
// gives. Returns false, leaving the work to ``at::topk``, when its answer would depend on how
// ties break: a NaN, or two equal values among the k + 1 largest. Otherwise the answer is
// unique, so it is at::topk's.
bool top_k_distinct(const float* logp, int64_t ld, const float* scores, int64_t count, int64_t width,
                    int64_t k, std::vector<Scored>& top);

// The same k largest, in at::topk's order also when values tie, for the inputs where at::topk
// (largest, sorted) takes its partial-sort path (k * 64 <= count * width): that path is
// std::partial_sort over (value, index) pairs in flat order, a heap of the first k entries
// that each later entry replaces the top of when it beats it, then a heap sort. This runs the
// same heap steps (std::make_heap, std::pop_heap, std::sort_heap on the same comparator), so
// ties come out as at::topk leaves them, without the (count * width) pair buffer and the
// tensor sums it is built from; only entries above the heap's top are touched, 8 per compare.
// Returns false (at::topk's work) on a NaN or outside that path.
bool top_k_heap(const float* logp, int64_t ld, const float* scores, int64_t count, int64_t width, int64_t k,
                std::vector<Scored>& top);

class ExactSearch {
 public:
  // One output hypothesis: (index of the input hypothesis it extends, handle, score, tokens
  // appended to that input's tokens).
  using Out = std::tuple<int64_t, int64_t, double, std::vector<int64_t>>;

  // predictor: table0 (V, 4H), the predictor_step params and eps, its output width, and the
  // 4 kernel tensors of p2g per layer (4 L). joiner: its 4 kernel tensors, symbols V,
  // activation 0 = ReLU, 1 = tanh, temperature. capacity: initial cache slots.
  ExactSearch(torch::Tensor table0, std::vector<torch::Tensor> pred_params, std::vector<double> pred_eps,
              int64_t out_dim, std::vector<torch::Tensor> p2g, std::vector<torch::Tensor> joiner,
              int64_t symbols, int64_t activation, double temperature, int64_t blank, int64_t beam,
              int64_t step_max_tokens, int64_t capacity);

  // Handle of the prefix (blank,) from the zero state (computed once).
  int64_t root();
  // Whether every handle names a live prefix.
  bool live(const std::vector<int64_t>& handles) const;
  // One chunk: enc (N, T, D); each stream's beam as handles and scores (counts per stream).
  // Returns each stream's new beam, best first. Frees prefixes unused for keep chunks.
  std::vector<std::vector<Out>> step(torch::Tensor enc, const std::vector<int64_t>& handles,
                                     const std::vector<double>& scores,
                                     const std::vector<int64_t>& counts, int64_t keep);

  // Inspection: (tokens, handle) of every live prefix, the free slots, the slot count.
  std::vector<std::tuple<std::vector<int64_t>, int64_t>> prefixes() const;
  std::vector<int64_t> free_slots() const { return free_; }
  int64_t capacity() const { return out_.size(0); }
  // Statistics: prefixes computed, cache hits, and rows through the joiner, the predictor
  // step and the recurrent gates (for flop counts).
  int64_t computed = 0, hits = 0, joiner_rows = 0, predictor_rows = 0, gate_rows = 0;
  // Top-k selections left to at::topk because of a tie or NaN that top_k_heap cannot take
  // (the rest run in one pass, or through top_k_heap when values tie: ``heap_topk``).
  int64_t fallback_topk = 0, heap_topk = 0;
  // Sorts of the blank-ended set left to at::sort for the same reason.
  int64_t fallback_sort = 0;

 protected:
  // What ModifiedSearch (modified_search.h) shares: the prefix cache, the joiner, the slots of
  // input handles.
  struct Hyp {
    int64_t slot;
    float score;
    int64_t origin;  // index of the step's input hypothesis this one extends
  };

  void sort_ascending(std::vector<Hyp>& b);
  std::vector<std::vector<Hyp>> frame(const torch::Tensor& enc_t, std::vector<std::vector<Hyp>> a);
  // Log-probs (rows, V) of the hypotheses' slots against their stream's frame: rows in order,
  // counts[k] of them for stream active[k] (enc_t: (N, D), one frame per stream).
  torch::Tensor join(const torch::Tensor& enc_t, const std::vector<int64_t>& active,
                     const std::vector<int64_t>& counts, const std::vector<int64_t>& slots);
  // The slot of each input handle (touched), checked live.
  std::vector<int64_t> input_slots(const std::vector<int64_t>& handles, const char* who);
  // (origin, handle, score, tokens added since origin) of a hypothesis in slot.
  Out output(int64_t slot, double score, int64_t origin, size_t origin_len);

  // One chunk, as step() documents it, for a search whose hypotheses H have slot, score and
  // origin: each stream's input beam as make(slot, score, input index), then
  // frame(enc_t, beams) per encoder frame, the beams as Out, and the stale prefixes freed.
  template <class H, class Make, class Frame>
  std::vector<std::vector<Out>> run_chunk(const char* who, torch::Tensor enc, const std::vector<int64_t>& handles,
                                          const std::vector<double>& scores, const std::vector<int64_t>& counts,
                                          int64_t keep, Make make, Frame frame) {
    const int64_t n = enc.size(0);
    TORCH_CHECK(static_cast<int64_t>(counts.size()) == n && handles.size() == scores.size(), who, ": ",
                counts.size(), " beams for ", n, " streams");
    const auto slots = input_slots(handles, who);
    std::vector<std::vector<H>> beams(n);
    int64_t i = 0;
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < counts[s]; ++j, ++i) beams[s].push_back(make(slots[i], scores[i], i));
    enc = enc.to(torch::kFloat32);
    for (int64_t t = 0; t < enc.size(1); ++t) beams = frame(enc.select(1, t), std::move(beams));
    std::vector<std::vector<Out>> result(n);
    for (int64_t s = 0; s < n; ++s)
      for (const auto& h : beams[s])
        result[s].push_back(output(h.slot, static_cast<double>(h.score), h.origin, tokens_[slots[h.origin]].size()));
    release_stale(keep);
    return result;
  }
  // Slots of parent + token for each request, computing the missing ones in one batch.
  std::vector<int64_t> extend(const std::vector<int64_t>& parents, const std::vector<int64_t>& tokens);
  // Slot of parent's prefix + token, or -1; parent -1 is the empty prefix.
  int64_t find(int64_t parent, int64_t token) const;
  // Record slot as holding parent's prefix + token (its tensors already stored).
  void add_prefix(int64_t slot, int64_t parent, int64_t token);
  // p2g of layer i: h (Q, H) -> (Q, 4H), counted in gate_rows.
  torch::Tensor layer_gates(const torch::Tensor& h, int64_t i);
  // p2g(h) per layer: h (L, Q, H) -> (L, Q, 4H).
  torch::Tensor recurrent_gates(const torch::Tensor& h);
  // predictor_step's [out, h, c] into slots.
  void store(const std::vector<int64_t>& slots, const std::vector<torch::Tensor>& res);
  std::vector<int64_t> alloc(int64_t n);
  void grow(int64_t need);
  void ensure_gates(const std::vector<int64_t>& parents);
  void touch(int64_t slot) { last_used_[slot] = tick_; }
  void release_stale(int64_t keep);

  torch::Tensor table0_;
  std::vector<torch::Tensor> pred_params_, p2g_, joiner_;
  std::vector<double> pred_eps_;
  int64_t out_dim_, symbols_, activation_, blank_, beam_, step_max_tokens_, layers_, hidden_;
  double temperature_;

  // The cache: tensors per slot, and per slot its prefix, hash, handle, last tick, gates flag.
  torch::Tensor out_, h_, c_, pg_;
  std::vector<std::vector<int64_t>> tokens_;
  std::vector<uint64_t> hash_;
  std::vector<int64_t> handle_, last_used_;
  std::vector<char> gates_ready_, used_;
  std::vector<int64_t> free_;  // popped from the back
  std::unordered_multimap<uint64_t, int64_t> by_hash_;
  std::unordered_map<int64_t, int64_t> slot_of_handle_;
  int64_t next_handle_ = 0, tick_ = 0;
};
