// The per-device plan error flag. Kernels check each plan row as they read it (relpos_math.h's
// plan_row_in_range; the Triton kernel's _plan_row): a row out of range for the batch is rendered from a safe
// placeholder and the device's flag is raised without a host synchronisation; relpos/plan_guard.py turns the flag
// into an error where the caller synchronises anyway.
#pragma once
#include <ATen/ATen.h>

namespace relpos {

// The int32 scalar error flag of `device`, created on first use; one per device for the whole process.
at::Tensor plan_error_flag(c10::Device device);

}  // namespace relpos
