// relation_kl, blocked: KL(softmax(S_T/τ) ‖ softmax(S_S/τ)) per (row, key group) over tiles of the
// similarities, never holding rows×keys (docs/ops.md). Written with ATen calls on tiles (a GEMM per
// tile, then a few vectorised elementwise passes over the tile while it is in cache), so one source
// serves the cpu backend (csrc/cpu/relation_kl.cpp, MKL GEMMs) and the cuda backend
// (csrc/cuda/bind_relation_kl.cpp, cuBLAS GEMMs); only the tile size differs.
//
// Inputs are unit rows in the statistics dtype (the op slice normalises). Without keys (mini-batch
// relation) the similarities are symmetric: each tile pair (I, J), I ≤ J, is computed once and
// serves rows I (columns J) and rows J (columns I), in the forward and in the backward, which
// halves the GEMMs. Tiles never straddle a key group, so every tile belongs to one softmax.
//
// Forward: online softmax per (row, group) for both sides (running max m, sum l of exp(x − m)) and
// acc = Σ exp(y − m_T)·(y − x); then lse = m + log l, KL = acc / l_T − lse_T + lse_S.
// Backward: dL/dX = scale·(P_S − P_T) with P recomputed from the saved lse; for X = A·Bᵀ the tile's
// gradient goes to A and B by two more GEMMs.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <vector>

namespace frkd::relation {

struct Tile {
  int64_t start, size, group;
};

// Tiles of at most `tile` consecutive keys that stay within each of the `groups` groups of keys.
inline std::vector<Tile> key_tiles(int64_t keys, int64_t groups, int64_t tile) {
  std::vector<Tile> out;
  const int64_t per_group = keys / groups;
  for (int64_t g = 0; g < groups && per_group > 0; ++g) {
    for (int64_t s = 0; s < per_group; s += tile) out.push_back({g * per_group + s, std::min(tile, per_group - s), g});
  }
  return out;
}

// Running statistics, each R×G: the student's max and sum, the teacher's max and sum, and acc.
struct Online {
  at::Tensor m_s, l_s, m_t, l_t, acc;

  Online(int64_t rows, int64_t groups, const at::TensorOptions& options)
      : m_s(at::full({rows, groups}, -INFINITY, options)),
        l_s(at::zeros({rows, groups}, options)),
        m_t(at::full({rows, groups}, -INFINITY, options)),
        l_t(at::zeros({rows, groups}, options)),
        acc(at::zeros({rows, groups}, options)) {}

  // Add logits x (student) and y (teacher), rows×cols (any strides), to rows [start, start + rows) of
  // group g.
  void add(int64_t start, int64_t g, const at::Tensor& x, const at::Tensor& y) {
    const int64_t n = x.size(0);
    at::Tensor ms = m_s.narrow(0, start, n).select(1, g), ls = l_s.narrow(0, start, n).select(1, g);
    at::Tensor mt = m_t.narrow(0, start, n).select(1, g), lt = l_t.narrow(0, start, n).select(1, g);
    at::Tensor ac = acc.narrow(0, start, n).select(1, g);
    const at::Tensor ms_new = at::maximum(ms, x.amax(1)), mt_new = at::maximum(mt, y.amax(1));
    ls.mul_((ms - ms_new).exp_()).add_((x - ms_new.unsqueeze(1)).exp_().sum(1));
    const at::Tensor rescale_t = (mt - mt_new).exp_();
    at::Tensor ey = (y - mt_new.unsqueeze(1)).exp_();
    lt.mul_(rescale_t).add_(ey.sum(1));
    ac.mul_(rescale_t).add_(ey.mul_(y - x).sum(1));
    ms.copy_(ms_new);
    mt.copy_(mt_new);
  }
};

// The kernels' contract, checked before any work: 2-D contiguous rows of one float dtype on one device,
// both keys or neither, groups dividing the keys, R×G statistics.
inline void check(const char* op, const at::Tensor& query_s, const at::Tensor& query_t,
                  const std::optional<at::Tensor>& key_s, const std::optional<at::Tensor>& key_t, int64_t groups,
                  const at::Tensor& stats) {
  const auto dt = query_s.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "frkd::", op, ": query_s must be float32 or float64, got ", dt);
  TORCH_CHECK(key_s.has_value() == key_t.has_value(), "frkd::", op, ": give both keys or neither");
  std::vector<std::pair<const char*, const at::Tensor*>> rows = {{"query_s", &query_s}, {"query_t", &query_t}};
  if (key_s.has_value()) rows.insert(rows.end(), {{"key_s", &*key_s}, {"key_t", &*key_t}});
  for (const auto& [name, t] : rows) {
    TORCH_CHECK(t->dim() == 2 && t->is_contiguous() && t->scalar_type() == dt && t->device() == query_s.device(),
                "frkd::", op, ": ", name, " must be 2-D contiguous ", dt, " on ", query_s.device(), ", got ",
                t->sizes(), " ", t->scalar_type(), " on ", t->device());
  }
  const int64_t R = query_s.size(0), M = key_s.has_value() ? key_s->size(0) : R;
  TORCH_CHECK(query_t.size(0) == R && groups >= 1 && M % groups == 0, "frkd::", op,
              ": query_t must have query_s's rows and groups must divide the keys, got ", query_t.sizes(), " and ",
              groups, " groups of ", M, " keys");
  TORCH_CHECK(!key_s.has_value() || (key_s->size(0) == key_t->size(0) && key_s->size(1) == query_s.size(1) &&
                                     key_t->size(1) == query_t.size(1)),
              "frkd::", op, ": keys must match each other's rows and their queries' channels");
  TORCH_CHECK(stats.sizes() == at::IntArrayRef({R, groups}) && stats.scalar_type() == dt, "frkd::", op,
              ": statistics must be ", dt, " [", R, ", ", groups, "], got ", stats.scalar_type(), " ", stats.sizes());
}

// query_s R×C_s, query_t R×C_t, keys M×C or none (keys = queries): unit rows, one float dtype.
// Writes kl, lse_s, lse_t (R×G).
inline void forward(const at::Tensor& query_s, const at::Tensor& query_t, const std::optional<at::Tensor>& key_s,
                    const std::optional<at::Tensor>& key_t, int64_t groups, double temperature, int64_t tile,
                    at::Tensor& kl, at::Tensor& lse_s, at::Tensor& lse_t) {
  const int64_t R = query_s.size(0);
  Online stats(R, groups, query_s.options());
  if (!key_s.has_value()) {  // X = A·Aᵀ with A = q/√τ: symmetric
    const double root = 1.0 / std::sqrt(temperature);
    const at::Tensor a = query_s * root, b = query_t * root;
    const std::vector<Tile> tiles = key_tiles(R, groups, tile);
    for (size_t i = 0; i < tiles.size(); ++i) {
      const Tile& I = tiles[i];
      const at::Tensor a_i = a.narrow(0, I.start, I.size), b_i = b.narrow(0, I.start, I.size);
      for (size_t j = i; j < tiles.size(); ++j) {
        const Tile& J = tiles[j];
        const at::Tensor x = at::mm(a_i, a.narrow(0, J.start, J.size).t());
        const at::Tensor y = at::mm(b_i, b.narrow(0, J.start, J.size).t());
        stats.add(I.start, J.group, x, y);
        if (j != i) stats.add(J.start, I.group, x.t(), y.t());
      }
    }
  } else {  // X = (q/τ)·kᵀ
    const at::Tensor a = query_s / temperature, b = query_t / temperature;
    const std::vector<Tile> tiles = key_tiles(key_s->size(0), groups, tile);
    for (int64_t start = 0; start < R; start += tile) {
      const int64_t n = std::min(tile, R - start);
      const at::Tensor a_i = a.narrow(0, start, n), b_i = b.narrow(0, start, n);
      for (const Tile& J : tiles) {
        stats.add(start, J.group, at::mm(a_i, key_s->narrow(0, J.start, J.size).t()),
                  at::mm(b_i, key_t->narrow(0, J.start, J.size).t()));
      }
    }
  }
  lse_s.copy_(stats.m_s + stats.l_s.log());
  lse_t.copy_(stats.m_t + stats.l_t.log());
  kl.copy_(stats.acc / stats.l_t - lse_t + lse_s);
}

// scale (0-dim) = grad_loss / (max(1, R)·G). Writes grad_query (R×C_s; without keys, both roles of
// the queries) and, with keys and need_key, grad_key (M×C_s): the gradients of the unit rows.
inline void backward(const at::Tensor& scale, const at::Tensor& query_s, const at::Tensor& query_t,
                     const std::optional<at::Tensor>& key_s, const std::optional<at::Tensor>& key_t,
                     const at::Tensor& lse_s, const at::Tensor& lse_t, int64_t groups, double temperature,
                     bool need_key, int64_t tile, at::Tensor& grad_query, at::Tensor& grad_key) {
  const int64_t R = query_s.size(0);
  if (!key_s.has_value()) {  // X = A·Aᵀ, A = q/√τ: dL/dA = (G + Gᵀ)·A, dL/dq = dL/dA / √τ
    const double root = 1.0 / std::sqrt(temperature);
    const at::Tensor a = query_s * root, b = query_t * root;
    at::Tensor grad_a = at::zeros_like(query_s);
    const std::vector<Tile> tiles = key_tiles(R, groups, tile);
    for (size_t i = 0; i < tiles.size(); ++i) {
      const Tile& I = tiles[i];
      const at::Tensor a_i = a.narrow(0, I.start, I.size), b_i = b.narrow(0, I.start, I.size);
      // rows I against group J: lse as a column; rows J against group I: lse as a row
      for (size_t j = i; j < tiles.size(); ++j) {
        const Tile& J = tiles[j];
        const at::Tensor a_j = a.narrow(0, J.start, J.size);
        const at::Tensor x = at::mm(a_i, a_j.t()), y = at::mm(b_i, b.narrow(0, J.start, J.size).t());
        at::Tensor h = (x - lse_s.narrow(0, I.start, I.size).select(1, J.group).unsqueeze(1)).exp_();
        h.sub_((y - lse_t.narrow(0, I.start, I.size).select(1, J.group).unsqueeze(1)).exp_());
        if (j == i) {
          h.add_(h.t().clone());
          grad_a.narrow(0, I.start, I.size).addmm_(h, a_i);
          continue;
        }
        h.add_((x - lse_s.narrow(0, J.start, J.size).select(1, I.group).unsqueeze(0)).exp_());
        h.sub_((y - lse_t.narrow(0, J.start, J.size).select(1, I.group).unsqueeze(0)).exp_());
        grad_a.narrow(0, I.start, I.size).addmm_(h, a_j);
        grad_a.narrow(0, J.start, J.size).addmm_(h.t(), a_i);
      }
    }
    grad_query.copy_(grad_a.mul_(scale * root));
    return;
  }
  // X = (q/τ)·kᵀ: dL/dq = G·k / τ, dL/dk = Gᵀ·(q/τ)
  const at::Tensor a = query_s / temperature, b = query_t / temperature;
  at::Tensor grad_q = at::zeros_like(query_s);
  at::Tensor grad_k = need_key ? at::zeros_like(*key_s) : at::Tensor();
  const std::vector<Tile> tiles = key_tiles(key_s->size(0), groups, tile);
  for (int64_t start = 0; start < R; start += tile) {
    const int64_t n = std::min(tile, R - start);
    const at::Tensor a_i = a.narrow(0, start, n), b_i = b.narrow(0, start, n);
    for (const Tile& J : tiles) {
      const at::Tensor k_j = key_s->narrow(0, J.start, J.size);
      at::Tensor g = (at::mm(a_i, k_j.t()) - lse_s.narrow(0, start, n).select(1, J.group).unsqueeze(1)).exp_();
      g.sub_((at::mm(b_i, key_t->narrow(0, J.start, J.size).t()) -
              lse_t.narrow(0, start, n).select(1, J.group).unsqueeze(1))
                 .exp_());
      grad_q.narrow(0, start, n).addmm_(g, k_j);
      if (need_key) grad_k.narrow(0, J.start, J.size).addmm_(g.t(), a_i);
    }
  }
  grad_query.copy_(grad_q.mul_(scale / temperature));
  if (need_key) grad_key.copy_(grad_k.mul_(scale));
}

}  // namespace frkd::relation
