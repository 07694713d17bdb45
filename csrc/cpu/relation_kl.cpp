// relation_kl on CPU: the blocked ATen implementation of cpu/relation_kl.h with MKL GEMMs per tile.
// Compiled as part of csrc/frkd_ext.cpp (one translation unit for all CPU kernels).
#include <torch/library.h>

#include "cpu/relation_kl.h"

namespace frkd::cpu {
namespace {

// 256×256 float32 similarities (256 KiB) per tile and side: both sides' tiles and the temporaries of the
// elementwise passes stay in L2, and a 256×C by C×256 GEMM still runs near MKL's peak at one thread.
constexpr int64_t kRelationTile = 256;

void relation_kl_cpu(const at::Tensor& query_s, const at::Tensor& query_t, const std::optional<at::Tensor>& key_s,
                     const std::optional<at::Tensor>& key_t, int64_t groups, double temperature, at::Tensor& kl,
                     at::Tensor& lse_s, at::Tensor& lse_t) {
  const char* op = "_cpu_relation_kl";
  for (const at::Tensor* stats : {&kl, &lse_s, &lse_t}) relation::check(op, query_s, query_t, key_s, key_t, groups, *stats);
  relation::forward(query_s, query_t, key_s, key_t, groups, temperature, kRelationTile, kl, lse_s, lse_t);
}

void relation_kl_backward_cpu(const at::Tensor& scale, const at::Tensor& query_s, const at::Tensor& query_t,
                              const std::optional<at::Tensor>& key_s, const std::optional<at::Tensor>& key_t,
                              const at::Tensor& lse_s, const at::Tensor& lse_t, int64_t groups, double temperature,
                              bool need_key, at::Tensor& grad_query, at::Tensor& grad_key) {
  const char* op = "_cpu_relation_kl_backward";
  for (const at::Tensor* stats : {&lse_s, &lse_t}) relation::check(op, query_s, query_t, key_s, key_t, groups, *stats);
  TORCH_CHECK(scale.dim() == 0 && grad_query.sizes() == query_s.sizes() &&
                  (!need_key || !key_s.has_value() || grad_key.sizes() == key_s->sizes()),
              "frkd::", op, ": scale must be 0-dim and the gradients shaped like query_s / key_s");
  relation::backward(scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                     need_key && key_s.has_value(), kRelationTile, grad_query, grad_key);
}

}  // namespace
}  // namespace frkd::cpu

TORCH_LIBRARY_IMPL(frkd, CPU, m) {
  m.impl("_cpu_relation_kl", &frkd::cpu::relation_kl_cpu);
  m.impl("_cpu_relation_kl_backward", &frkd::cpu::relation_kl_backward_cpu);
}
