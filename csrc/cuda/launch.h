// Host API of the CUDA kernels (csrc/cuda/*.cu): plain pointers, sizes, element strides and a
// stream in, no torch types. The torch binding (csrc/cuda/bind_*.cpp) validates tensors, allocates
// outputs and workspaces, and calls these on the current stream under a device guard.
// "A" below is the accumulation/statistics type: float32, or float64 when an input is float64.
// Every launcher throws std::runtime_error when a launch fails.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace frkd::cuda {

enum class Float { F32, F16, BF16, F64 };
enum class Label { U8, I32, I64 };

// A B×C×H×W map (features, logits, gradients) of any float dtype and element strides.
struct Map4 {
  void* data;
  Float dtype;
  int64_t B, C, H, W;
  int64_t sB, sC, sH, sW;
};

// B×H×W integer labels with element strides; B, H, W are those of the map they go with.
struct Labels {
  const void* data;
  Label dtype;
  int64_t sB, sH, sW;
};

// --- prototype_pool (prototype_pool.cu) ----------------------------------------------------------

// Bytes of scratch memory `prototype_pool` needs (any alignment of at least 256 bytes).
size_t prototype_pool_workspace(const Map4& feat, int64_t K, bool deterministic);
// protos B×K×C and counts B×K: contiguous, of type A (double iff feat is float64).
void prototype_pool(const Map4& feat, const Labels& labels, int64_t K, int64_t ignore_index, bool deterministic,
                    void* protos, void* counts, void* workspace, cudaStream_t stream);
// grad_feat (strided, feat's dtype) = grad_protos[b, y_p] / max(counts[b, y_p], 1) on valid pixels, else 0.
// grad_protos B×K×C and counts B×K contiguous of type A (double iff acc_double).
void prototype_pool_backward(const void* grad_protos, const void* counts, bool acc_double, const Labels& labels,
                             int64_t K, int64_t ignore_index, const Map4& grad_feat, cudaStream_t stream);

// --- class_distance_maps (class_distance_maps.cu) -----------------------------------------------

// protos B×K×C and counts B×K contiguous of type A; intra, inter B×H×W contiguous of type A;
// inter_class B×H×W contiguous int32.
size_t class_distance_maps_workspace(const Map4& feat, int64_t K, bool acc_double);
void class_distance_maps(const Map4& feat, const Labels& labels, const void* protos, const void* counts, int64_t K,
                         bool acc_double, int64_t ignore_index, double eps, void* intra, void* inter,
                         int32_t* inter_class, void* workspace, cudaStream_t stream);

// grad_intra, grad_inter B×H×W contiguous of type A; inter_class as saved by the forward.
// grad_feat: strided, feat's dtype (data null when not needed); grad_protos B×K×C contiguous of
// type A (null when not needed).
size_t class_distance_maps_backward_workspace(const Map4& feat, int64_t K, bool acc_double, bool need_protos,
                                              bool deterministic);
void class_distance_maps_backward(const void* grad_intra, const void* grad_inter, const Map4& feat,
                                  const Labels& labels, const void* protos, const int32_t* inter_class, int64_t K,
                                  bool acc_double, int64_t ignore_index, double eps, bool deterministic,
                                  const Map4& grad_feat, void* grad_protos, void* workspace, cudaStream_t stream);

// --- masked_feature_mse (masked_feature_mse.cu) ---------------------------------------------------

// weight B×H×W contiguous of type A, where A is double iff acc_double or student or teacher is
// float64; loss: one element of type A. Deterministic (no atomics).
size_t masked_feature_mse_workspace(const Map4& student);
void masked_feature_mse(const Map4& student, const Map4& teacher, const void* weight, bool acc_double, void* loss,
                        void* workspace, cudaStream_t stream);
// grad_loss: one element of type A; grad_student / grad_teacher: strided in their input's dtype,
// data null when not needed.
void masked_feature_mse_backward(const void* grad_loss, const Map4& student, const Map4& teacher, const void* weight,
                                 bool acc_double, const Map4& grad_student, const Map4& grad_teacher,
                                 cudaStream_t stream);

// --- teacher_entropy (teacher_entropy.cu) --------------------------------------------------------

// logits B×K×H×W (Map4 with C = K); entropy B×H×W contiguous of type A (double iff logits are
// float64); pred B×H×W contiguous int64.
void teacher_entropy(const Map4& logits, double temperature, void* entropy, int64_t* pred, cudaStream_t stream);

}  // namespace frkd::cuda
