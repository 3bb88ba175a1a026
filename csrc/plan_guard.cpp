#include "plan_guard.h"

#include <mutex>
#include <unordered_map>

#include "relpos_math.h"

namespace relpos {

at::Tensor bad_plan_rows(const at::Tensor& plan, int64_t num_images, int64_t patch_size) {
  const at::Tensor p = plan.to(at::kLong);
  const auto col = [&](int c) { return p.select(1, c); };
  return col(kImage).lt(0) | col(kImage).ge(num_images) | col(kTop).lt(0) | col(kLeft).lt(0) |
         col(kHeight).gt(kMaxSide) | col(kWidth).gt(kMaxSide) | (col(kTop) + patch_size).gt(col(kHeight)) |
         (col(kLeft) + patch_size).gt(col(kWidth)) | col(kChannel).lt(0) | col(kChannel).gt(2) |
         col(kDown).lt(0) | col(kDown).gt(patch_size);
}

at::Tensor plan_error_flag(c10::Device device) {
  // Never destroyed: a static tensor freed after the CUDA context at exit would crash the process.
  static auto* flags = new std::unordered_map<c10::Device, at::Tensor>();
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = flags->find(device);
  if (found == flags->end())
    found = flags->emplace(device, at::zeros({}, at::TensorOptions().dtype(at::kInt).device(device))).first;
  return found->second;
}

at::Tensor guard_plan(const at::Tensor& plan, int64_t num_images, int64_t patch_size) {
  TORCH_CHECK_TYPE(plan.scalar_type() == at::kInt, "plan must be int32, got ", plan.scalar_type());
  TORCH_CHECK_VALUE(plan.dim() == 2 && plan.size(1) == kPlanColumns, "plan must have shape [N, 7], got ",
                    plan.sizes());
  const at::Tensor bad = bad_plan_rows(plan, num_images, patch_size);
  plan_error_flag(plan.device()).bitwise_or_(bad.any().to(at::kInt));
  // Built on the plan's device (no host-to-device copy): image 0, resized to the patch, at (0, 0), no down size.
  at::Tensor placeholder = at::zeros({kPlanColumns}, plan.options());
  placeholder.narrow(0, kHeight, 1).fill_(patch_size);
  placeholder.narrow(0, kWidth, 1).fill_(patch_size);
  return at::where(bad.unsqueeze(1), placeholder, plan).contiguous();
}

}  // namespace relpos
