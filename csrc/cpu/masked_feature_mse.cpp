// masked_feature_mse on CPU: Σ_{b,p} weight[b,p]·Σ_c (student − teacher)² / C, and its backward.
// The forward sums each fixed tile of pixels on its own and adds the tiles' partial sums in tile
// order, so the loss does not depend on the number of threads.
// Compiled as part of csrc/frkd_ext.cpp (one translation unit for all CPU kernels).
#include "cpu/tiles.h"

namespace frkd::cpu {
namespace {


template <typename acc_t>
acc_t mse_forward(const FeatureMap& s, const FeatureMap& t, const acc_t* weight, int64_t B) {
  const int64_t C = s.C, N = s.N, tiles = num_tiles(N);
  std::vector<acc_t> partial(B * tiles);
  at::parallel_for(0, B * tiles, grain(T * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ts(C * T), tt(C * T), sq(T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, N - p0);
      load_tile(s, b, 0, C, p0, n, ts.data(), T, 1);
      load_tile(t, b, 0, C, p0, n, tt.data(), T, 1);
      std::fill(sq.begin(), sq.end(), acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t i = 0; i < n; ++i) {
          const acc_t d = ts[c * T + i] - tt[c * T + i];
          sq[i] += d * d;
        }
      }
      acc_t sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += weight[b * N + p0 + i] * sq[i];
      partial[task] = sum;
    }
  });
  acc_t total = 0;
  for (acc_t v : partial) total += v;
  return total / static_cast<acc_t>(C);
}

// grad_student = (2/C)·grad_loss·weight·(student − teacher); grad_teacher = −grad_student.
template <typename acc_t>
void mse_backward(acc_t grad_loss, const FeatureMap& s, const FeatureMap& t, const acc_t* weight, int64_t B,
                  const FeatureMap* grad_s, const FeatureMap* grad_t) {
  const int64_t C = s.C, N = s.N, tiles = num_tiles(N);
  const acc_t scale = acc_t(2) / static_cast<acc_t>(C) * grad_loss;
  at::parallel_for(0, B * tiles, grain(T * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ts(C * T), tt(C * T), w(T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, N - p0);
      load_tile(s, b, 0, C, p0, n, ts.data(), T, 1);
      load_tile(t, b, 0, C, p0, n, tt.data(), T, 1);
      for (int64_t i = 0; i < n; ++i) w[i] = scale * weight[b * N + p0 + i];
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t i = 0; i < n; ++i) ts[c * T + i] = w[i] * (ts[c * T + i] - tt[c * T + i]);
      }
      if (grad_s) store_tile(*grad_s, b, 0, C, p0, n, ts.data(), T, 1);
      if (!grad_t) continue;
      for (int64_t j = 0; j < C * T; ++j) ts[j] = -ts[j];
      store_tile(*grad_t, b, 0, C, p0, n, ts.data(), T, 1);
    }
  });
}

void check_inputs(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& weight,
                  at::ScalarType dt, const char* op) {
  TORCH_CHECK(student.dim() == 4 && teacher.sizes() == student.sizes(), "frkd::", op,
              ": teacher must have the student's B×C×H×W shape ", student.sizes(), ", got ", teacher.sizes());
  check_array(weight, dt, {student.size(0), student.size(2), student.size(3)}, op, "weight");
}

void masked_feature_mse_cpu(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& weight,
                            at::Tensor& loss) {
  const char* op = "_cpu_masked_feature_mse";
  const at::ScalarType dt = loss.scalar_type();
  check_inputs(student, teacher, weight, dt, op);
  check_array(loss, dt, {}, op, "loss");
  AT_DISPATCH_FLOATING_TYPES(dt, "frkd_cpu_kernel", [&] {
    *loss.data_ptr<scalar_t>() =
        mse_forward<scalar_t>(FeatureMap(student), FeatureMap(teacher), weight.const_data_ptr<scalar_t>(),
                              student.size(0));
  });
}

void masked_feature_mse_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student,
                                     const at::Tensor& teacher, const at::Tensor& weight, bool need_student,
                                     bool need_teacher, at::Tensor& grad_student, at::Tensor& grad_teacher) {
  const char* op = "_cpu_masked_feature_mse_backward";
  const at::ScalarType dt = weight.scalar_type();
  check_inputs(student, teacher, weight, dt, op);
  check_array(grad_loss, dt, {}, op, "grad_loss");
  for (auto [need, out, name] : {std::tuple{need_student, &grad_student, "grad_student"},
                                 std::tuple{need_teacher, &grad_teacher, "grad_teacher"}}) {
    TORCH_CHECK(!need || out->sizes() == student.sizes(), "frkd::", op, ": ", name, " must have shape ",
                student.sizes(), ", got ", out->sizes());
  }
  if (!need_student && !need_teacher) return;
  AT_DISPATCH_FLOATING_TYPES(dt, "frkd_cpu_kernel", [&] {
    const FeatureMap gs = FeatureMap(need_student ? grad_student : student);
    const FeatureMap gt = FeatureMap(need_teacher ? grad_teacher : teacher);
    mse_backward<scalar_t>(*grad_loss.const_data_ptr<scalar_t>(), FeatureMap(student), FeatureMap(teacher),
                           weight.const_data_ptr<scalar_t>(), student.size(0), need_student ? &gs : nullptr,
                           need_teacher ? &gt : nullptr);
  });
}

}  // namespace
}  // namespace frkd::cpu

TORCH_LIBRARY_IMPL(frkd, CPU, m) {
  m.impl("_cpu_masked_feature_mse", &frkd::cpu::masked_feature_mse_cpu);
  m.impl("_cpu_masked_feature_mse_backward", &frkd::cpu::masked_feature_mse_backward_cpu);
}
