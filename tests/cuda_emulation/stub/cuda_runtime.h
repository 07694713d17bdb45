// Stand-in for CUDA's runtime header in the host emulation (see emu.h).
#pragma once
#include "cuda_runtime_api.h"
