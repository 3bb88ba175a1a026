// relpos::extract_patches: the op schema (declared once), its argument checks, and the CPU implementation.
// The CUDA implementation registers itself for the same schema in csrc/cuda/extract_patches_binding.cpp.
#include "extract_patches.h"

#include <ATen/Parallel.h>
#include <Python.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <vector>

extern "C" {
// Importing relpos._C loads this library, which runs the TORCH_LIBRARY registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace relpos {

int color_code(const std::string& color) {
  if (color == "none") return kColorNone;
  if (color == "drop") return kColorDrop;
  if (color == "project") return kColorProject;
  TORCH_CHECK_VALUE(false, "color must be 'drop', 'project' or 'none', got '", color, "'");
  return -1;
}

void check_extract_args(const at::Tensor& data, const at::Tensor& meta, const at::Tensor& plan, int64_t patch_size,
                        at::ScalarType dtype) {
  TORCH_CHECK_TYPE(data.scalar_type() == at::kByte, "data must be uint8, got ", data.scalar_type());
  TORCH_CHECK_VALUE(data.dim() == 1 && data.is_contiguous(), "data must be a contiguous 1-D uint8 buffer, got shape ",
                    data.sizes());
  TORCH_CHECK_TYPE(meta.scalar_type() == at::kLong, "meta must be int64, got ", meta.scalar_type());
  TORCH_CHECK_VALUE(meta.dim() == 2 && meta.size(1) == kMetaColumns && meta.size(0) > 0,
                    "meta must have shape [B > 0, 6], got ", meta.sizes());
  TORCH_CHECK_TYPE(plan.scalar_type() == at::kInt, "plan must be int32, got ", plan.scalar_type());
  TORCH_CHECK_VALUE(plan.dim() == 2 && plan.size(1) == kPlanColumns, "plan must have shape [N, 7], got ",
                    plan.sizes());
  TORCH_CHECK_VALUE(meta.is_contiguous() && plan.is_contiguous(), "meta and plan must be contiguous");
  TORCH_CHECK_VALUE(plan.size(0) < (int64_t{1} << 31), "plan has too many patches: ", plan.size(0));
  TORCH_CHECK_VALUE(patch_size >= 1 && patch_size <= 4096, "patch_size must lie in [1, 4096], got ", patch_size);
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "dtype must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK_VALUE(meta.device() == plan.device() || meta.is_cpu() || plan.is_cpu(),
                    "meta and plan are on different devices: ", meta.device(), " and ", plan.device());
  if (meta.is_cpu()) {
    const int64_t* m = meta.data_ptr<int64_t>();
    for (int64_t b = 0; b < meta.size(0); ++b) {
      const int64_t* row = m + b * kMetaColumns;
      TORCH_CHECK_VALUE(row[kOffset] >= 0 && row[kRows] >= 1 && row[kCols] >= 1 && row[kStrideC] >= 0 &&
                            row[kStrideY] >= 0 && row[kStrideX] >= 0,
                        "meta row ", b, " has a negative offset or stride, or an empty image");
      TORCH_CHECK_VALUE(row[kRows] <= kMaxSide && row[kCols] <= kMaxSide, "meta row ", b, " is a ", row[kRows], "x",
                        row[kCols], " image; sides up to ", kMaxSide, " pixels are supported");
      const int64_t last = row[kOffset] + 2 * row[kStrideC] + (row[kRows] - 1) * row[kStrideY] +
                           (row[kCols] - 1) * row[kStrideX];
      TORCH_CHECK_VALUE(last < data.numel(), "meta row ", b, " reaches byte ", last, " past the end of data (",
                        data.numel(), " bytes)");
    }
  }
  if (plan.is_cpu()) {
    const int32_t* p = plan.data_ptr<int32_t>();
    const int64_t* m = meta.is_cpu() ? meta.data_ptr<int64_t>() : nullptr;
    for (int64_t n = 0; n < plan.size(0); ++n) {
      const int32_t* row = p + n * kPlanColumns;
      TORCH_CHECK_VALUE(row[kImage] >= 0 && row[kImage] < meta.size(0), "plan row ", n, " names image ", row[kImage],
                        " but the batch has ", meta.size(0), " images (is the plan from another batch?)");
      TORCH_CHECK_VALUE(row[kHeight] >= patch_size && row[kWidth] >= patch_size, "plan row ", n, " has resized size ",
                        row[kHeight], "x", row[kWidth], ", smaller than the patch (", patch_size, ")");
      TORCH_CHECK_VALUE(row[kTop] >= 0 && row[kLeft] >= 0 && row[kTop] + patch_size <= row[kHeight] &&
                            row[kLeft] + patch_size <= row[kWidth],
                        "plan row ", n, " puts the patch at (", row[kTop], ", ", row[kLeft],
                        ") outside the resized image ", row[kHeight], "x", row[kWidth]);
      TORCH_CHECK_VALUE(row[kChannel] >= 0 && row[kChannel] <= 2, "plan row ", n, " keeps channel ", row[kChannel],
                        ", expected 0, 1 or 2");
      TORCH_CHECK_VALUE(row[kDown] >= 0 && row[kDown] <= patch_size, "plan row ", n, " has down size ", row[kDown],
                        ", expected 0 (none) or 1..", patch_size);
      TORCH_CHECK_VALUE(row[kHeight] <= kMaxSide && row[kWidth] <= kMaxSide, "plan row ", n, " resizes to ",
                        row[kHeight], "x", row[kWidth], "; sides up to ", kMaxSide, " pixels are supported");
    }
  }
}

void check_out(const at::Tensor& out, const at::Tensor& plan) {
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16 ||
                       out.scalar_type() == at::kHalf,
                   "out must be float32, bfloat16 or float16, got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.dim() == 4 && out.size(0) == plan.size(0) && out.size(1) == 3 && out.size(2) == out.size(3),
                    "out must have shape [N, 3, P, P] with N = ", plan.size(0), " plan rows, got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_non_overlapping_and_dense(), "out must be dense and non-overlapping, got strides ",
                    out.strides());
}

at::Tensor empty_patches(int64_t num_patches, int64_t patch_size, at::ScalarType dtype, bool channels_last,
                         const at::Device& device) {
  return at::empty({num_patches, 3, patch_size, patch_size},
                   at::TensorOptions().dtype(dtype).device(device).memory_format(
                       channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

namespace {

template <typename out_t>
void extract_cpu_kernel(const uint8_t* data, const int64_t* meta, const int32_t* plan, int64_t num_patches,
                        int patch, uint64_t seed, int color, out_t* out, const int64_t* out_strides) {
  const int pixels = patch * patch;
  at::parallel_for(0, num_patches, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> values(3 * static_cast<size_t>(pixels));  // the patch, computed once, then normalised
    for (int64_t n = begin; n < end; ++n) {
      const int32_t* row = plan + n * kPlanColumns;
      const int64_t* m = meta + int64_t{row[kImage]} * kMetaColumns;
      const ImageView image{data + m[kOffset], m[kRows], m[kCols], m[kStrideC], m[kStrideY], m[kStrideX]};
      const PatchGeometry g = make_geometry(image, row, patch);
      const int kept = row[kChannel];
      PatchStats stats = {};
      for (int py = 0; py < patch; ++py) {
        for (int px = 0; px < patch; ++px) {
          float v[3];
          pixel_values(g, color, kept, seed, static_cast<uint32_t>(n), py, px, v);
          for (int c = 0; c < 3; ++c) {
            values[c * pixels + py * patch + px] = v[c];
            stats.sum[c] += v[c];
            stats.sum_sq[c] += static_cast<double>(v[c]) * v[c];
          }
        }
      }
      float mean[3], scale;
      finish_stats(stats, color, kept, pixels, mean, &scale);
      out_t* base = out + n * out_strides[0];
      for (int c = 0; c < 3; ++c)
        for (int py = 0; py < patch; ++py)
          for (int px = 0; px < patch; ++px)
            base[c * out_strides[1] + py * out_strides[2] + px * out_strides[3]] =
                static_cast<out_t>((values[c * pixels + py * patch + px] - mean[c]) * scale);
    }
  });
}

void extract_patches_out_cpu(const at::Tensor& data, const at::Tensor& meta, const at::Tensor& plan, int64_t seed,
                             c10::string_view color, const at::Tensor& out) {
  TORCH_CHECK_VALUE(data.is_cpu() && meta.is_cpu() && plan.is_cpu() && out.is_cpu(),
                    "the CPU op needs data, meta, plan and out on the CPU, got ", data.device(), ", ", meta.device(),
                    ", ", plan.device(), ", ", out.device());
  check_out(out, plan);
  check_extract_args(data, meta, plan, out.size(2), out.scalar_type());
  const int code = color_code(std::string(color));
  const int64_t strides[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "extract_patches_cpu", [&] {
    extract_cpu_kernel<scalar_t>(data.data_ptr<uint8_t>(), meta.data_ptr<int64_t>(), plan.data_ptr<int32_t>(),
                                 plan.size(0), static_cast<int>(out.size(2)), static_cast<uint64_t>(seed), code,
                                 out.data_ptr<scalar_t>(), strides);
  });
}

}  // namespace

at::Tensor extract_patches(const at::Tensor& data, const at::Tensor& meta, const at::Tensor& plan, int64_t seed,
                           c10::string_view color, int64_t patch_size, at::ScalarType dtype, bool channels_last) {
  TORCH_CHECK_VALUE(plan.dim() == 2, "plan must have shape [N, 7], got ", plan.sizes());
  TORCH_CHECK_VALUE(patch_size >= 1 && patch_size <= 4096, "patch_size must lie in [1, 4096], got ", patch_size);
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "dtype must be float32, bfloat16 or float16, got ", dtype);
  at::Tensor out = empty_patches(plan.size(0), patch_size, dtype, channels_last, data.device());
  static auto out_op = c10::Dispatcher::singleton().findSchemaOrThrow("relpos::extract_patches_out", "")
                           .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                       c10::string_view, const at::Tensor&)>();
  out_op.call(data, meta, plan, seed, color, out);
  return out;
}

// One schema for each op, declared here only; each device registers its implementation of the out variant,
// and the functional op (allocate, then fill) is the same for every device.
TORCH_LIBRARY(relpos, m) {
  m.def(
      "extract_patches(Tensor data, Tensor meta, Tensor plan, int seed, str color, int patch_size, "
      "ScalarType dtype, bool channels_last) -> Tensor");
  m.def("extract_patches_out(Tensor data, Tensor meta, Tensor plan, int seed, str color, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(relpos, CompositeExplicitAutograd, m) { m.impl("extract_patches", &extract_patches); }

TORCH_LIBRARY_IMPL(relpos, CPU, m) { m.impl("extract_patches_out", &extract_patches_out_cpu); }

}  // namespace relpos
