// Stand-in for CUDA's bfloat16 type in the host emulation: c10::BFloat16 has the same bits and rounding.
#pragma once
#include <c10/util/BFloat16.h>
using __nv_bfloat16 = c10::BFloat16;
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return c10::BFloat16(f); }
