// relation_kl on CUDA tensors: the blocked ATen implementation of cpu/relation_kl.h (one source for
// both compiled backends) with cuBLAS GEMMs per tile; there is no hand-written relation_kl.cu. Larger
// tiles than on the CPU: each tile is a handful of kernel launches, and 2048×2048 similarities
// (16 MiB in float32 per side) keep the GPU busy while memory stays O(rows + tile²).
#include <torch/library.h>

#include "cpu/relation_kl.h"
#include "cuda/tensor_views.h"  // the device guard

namespace frkd::cuda {
namespace {

constexpr int64_t kRelationTile = 2048;

void relation_kl_cuda(const at::Tensor& query_s, const at::Tensor& query_t, const std::optional<at::Tensor>& key_s,
                      const std::optional<at::Tensor>& key_t, int64_t groups, double temperature, at::Tensor& kl,
                      at::Tensor& lse_s, at::Tensor& lse_t) {
  const char* op = "_cuda_relation_kl";
  for (const at::Tensor* stats : {&kl, &lse_s, &lse_t}) relation::check(op, query_s, query_t, key_s, key_t, groups, *stats);
  const c10::cuda::CUDAGuard guard(query_s.device());
  relation::forward(query_s, query_t, key_s, key_t, groups, temperature, kRelationTile, kl, lse_s, lse_t);
}

void relation_kl_backward_cuda(const at::Tensor& scale, const at::Tensor& query_s, const at::Tensor& query_t,
                               const std::optional<at::Tensor>& key_s, const std::optional<at::Tensor>& key_t,
                               const at::Tensor& lse_s, const at::Tensor& lse_t, int64_t groups, double temperature,
                               bool need_key, at::Tensor& grad_query, at::Tensor& grad_key) {
  const char* op = "_cuda_relation_kl_backward";
  for (const at::Tensor* stats : {&lse_s, &lse_t}) relation::check(op, query_s, query_t, key_s, key_t, groups, *stats);
  TORCH_CHECK(scale.dim() == 0 && grad_query.sizes() == query_s.sizes() &&
                  (!need_key || !key_s.has_value() || grad_key.sizes() == key_s->sizes()),
              "frkd::", op, ": scale must be 0-dim and the gradients shaped like query_s / key_s");
  const c10::cuda::CUDAGuard guard(query_s.device());
  relation::backward(scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                     need_key && key_s.has_value(), kRelationTile, grad_query, grad_key);
}

}  // namespace
}  // namespace frkd::cuda

TORCH_LIBRARY_IMPL(frkd, CUDA, m) {
  m.impl("_cuda_relation_kl", &frkd::cuda::relation_kl_cuda);
  m.impl("_cuda_relation_kl_backward", &frkd::cuda::relation_kl_backward_cuda);
}
