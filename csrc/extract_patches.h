// Argument checks of relpos::extract_patches, shared by the CPU and the CUDA bindings so that bad input
// gets the same message on every device.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "relpos_math.h"

namespace relpos {

int color_code(const std::string& color);

// Checks dtypes, shapes and devices; when meta and plan are on the CPU also every value in them.
void check_extract_args(const at::Tensor& data, const at::Tensor& meta, const at::Tensor& plan, int64_t patch_size,
                        at::ScalarType dtype);

// Checks the preallocated output of the out variant: float type, [N, 3, P, P], dense.
void check_out(const at::Tensor& out, const at::Tensor& plan);

// Rejects an `out` whose bytes overlap `input` (named `name` in the message) on the same device.
void check_out_disjoint(const at::Tensor& out, const at::Tensor& input, const char* name);

at::Tensor empty_patches(int64_t num_patches, int64_t patch_size, at::ScalarType dtype, bool channels_last,
                         const at::Device& device);

}  // namespace relpos
