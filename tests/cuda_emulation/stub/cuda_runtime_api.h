// Stand-in for CUDA's runtime API in the host emulation (see emu.h): no device, memset on host
// memory, EMU_SMS multiprocessors (default 2) to steer how reductions are split.
#pragma once
#include "emu.h"
typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  const char* e = std::getenv("EMU_SMS");
  *v = e ? std::atoi(e) : 2;
  return cudaSuccess;
}
