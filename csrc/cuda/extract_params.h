// The parameter struct of the CUDA kernel of relpos::extract_patches: plain pointers and sizes, no torch and no
// CUDA headers, so that the staged phases (staged_phases.h) and their CPU test harness can use it too.
#pragma once
#include <stdint.h>

namespace relpos {

enum OutputType : int { kOutFloat32 = 0, kOutBFloat16 = 1, kOutFloat16 = 2 };

struct ExtractParams {
  const uint8_t* data;  // every image, packed
  const int64_t* meta;  // [num_images, 6] on the device: offset, rows, cols, stride_c, stride_y, stride_x
  const int32_t* plan;  // [num_patches, 7] on the device; rows out of range are rendered from a placeholder
  int64_t num_patches;
  int64_t num_images;   // rows of meta
  int* plan_error;      // set to 1 (atomically) when a plan row was out of range; never cleared here
  int patch;
  uint64_t seed;
  int color;          // Color in relpos_math.h
  void* out;          // [num_patches, 3, patch, patch] with the strides below (elements)
  int out_type;       // OutputType
  int64_t out_strides[4];
};

}  // namespace relpos
