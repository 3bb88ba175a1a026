// Launch interface of the CUDA kernel of relpos::extract_patches. Plain pointers and sizes only: the kernel
// source knows nothing of torch (the binding in extract_patches_binding.cpp fills this struct).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "extract_params.h"

namespace relpos {

// Enqueues the kernel on `stream`; returns the launch error, if any.
cudaError_t launch_extract_patches(const ExtractParams& params, cudaStream_t stream);

}  // namespace relpos
