// Launch interface of the CUDA kernel of relpos::extract_patches. Plain pointers and sizes only: the kernel
// source knows nothing of torch (the binding in extract_patches_binding.cpp fills this struct).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace relpos {

enum OutputType : int { kOutFloat32 = 0, kOutBFloat16 = 1, kOutFloat16 = 2 };

struct ExtractParams {
  const uint8_t* data;  // every image, packed
  const int64_t* meta;  // [num_images, 6] on the device: offset, rows, cols, stride_c, stride_y, stride_x
  const int32_t* plan;  // [num_patches, 7] on the device
  int64_t num_patches;
  int patch;
  uint64_t seed;
  int color;          // Color in relpos_math.h
  void* out;          // [num_patches, 3, patch, patch] with the strides below (elements)
  int out_type;       // OutputType
  int64_t out_strides[4];
};

// Enqueues the kernel on `stream`; returns the launch error, if any.
cudaError_t launch_extract_patches(const ExtractParams& params, cudaStream_t stream);

}  // namespace relpos
