// Plan rows checked on the device that holds them, with no host synchronisation (the C++ twin of
// relpos/plan_guard.py, which the Triton op uses): rows out of range for the batch are replaced by a safe
// placeholder and the device's error flag is raised, so a kernel never reads out of bounds and the caller
// turns the flag into an error where it synchronises anyway.
#pragma once
#include <ATen/ATen.h>

namespace relpos {

// bool [N]: rows that name a missing image or put the patch outside its resized image.
at::Tensor bad_plan_rows(const at::Tensor& plan, int64_t num_images, int64_t patch_size);

// `plan` (int32 [N, 7], any device) with bad rows replaced by image 0 resized to the patch itself; ORs
// "any bad row" into plan_error_flag(plan.device()) without reading it.
at::Tensor guard_plan(const at::Tensor& plan, int64_t num_images, int64_t patch_size);

// The int32 scalar error flag of `device`, created on first use; one per device for the whole process.
at::Tensor plan_error_flag(c10::Device device);

}  // namespace relpos
