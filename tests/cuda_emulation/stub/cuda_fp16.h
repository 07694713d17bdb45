// Stand-in for CUDA's half type in the host emulation: c10::Half has the same bits and rounding.
#pragma once
#include <c10/util/Half.h>
using __half = c10::Half;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return c10::Half(f); }
