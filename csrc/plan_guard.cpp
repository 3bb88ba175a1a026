#include "plan_guard.h"

#include <mutex>
#include <unordered_map>

namespace relpos {

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

}  // namespace relpos
