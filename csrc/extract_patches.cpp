// relpos::extract_patches: the op schema (declared once), its argument checks, and the CPU implementation.
// The CUDA implementation registers itself for the same schema in csrc/cuda/extract_patches_binding.cpp.
#include "extract_patches.h"

#include "plan_guard.h"

#include <ATen/Parallel.h>
#include <Python.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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
      TORCH_CHECK_VALUE(row[kOffset] <= data.numel() && row[kStrideC] <= data.numel() &&
                            row[kStrideY] <= data.numel() && row[kStrideX] <= data.numel(),
                        "meta row ", b, " has an offset or stride larger than data (", data.numel(), " bytes)");
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

// [lowest, highest) byte addresses a tensor's elements can touch.
static std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(t.data_ptr());
  if (t.numel() == 0) return {start, start};
  int64_t low = 0, high = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach < 0 ? low : high) += reach;
  }
  return {start + low * t.element_size(), start + (high + 1) * t.element_size()};
}

void check_out_disjoint(const at::Tensor& out, const at::Tensor& input, const char* name) {
  if (out.device() != input.device()) return;  // separate memories
  const auto [out_begin, out_end] = byte_span(out);
  const auto [in_begin, in_end] = byte_span(input);
  TORCH_CHECK_VALUE(out_end <= in_begin || in_end <= out_begin, "out shares memory with ", name,
                    "; pass a separate output tensor");
}

at::Tensor empty_patches(int64_t num_patches, int64_t patch_size, at::ScalarType dtype, bool channels_last,
                         const at::Device& device) {
  return at::empty({num_patches, 3, patch_size, patch_size},
                   at::TensorOptions().dtype(dtype).device(device).memory_format(
                       channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

namespace {

// The hot loops, compiled once for AVX2 and once for the baseline ISA (see cpu_kernel_impl.h).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RELPOS_HAVE_AVX2_COPY 1
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
#define RELPOS_AVX2 1
#define RELPOS_AVX512 0
#include "cpu_kernel_impl.h"
#undef RELPOS_AVX512
#undef RELPOS_AVX2
}  // namespace avx2
#pragma GCC pop_options
// The AVX2 copy again, with the Philox noise sixteen lanes wide (the one loop where AVX-512 measurably pays).
#pragma GCC push_options
#pragma GCC target("avx2,avx512f")
#pragma GCC optimize("fp-contract=off")  // AVX-512F brings FMA: no contraction, or the floats would differ
namespace avx512 {
#define RELPOS_AVX2 1
#define RELPOS_AVX512 1
#include "cpu_kernel_impl.h"
#undef RELPOS_AVX512
#undef RELPOS_AVX2
}  // namespace avx512
#pragma GCC pop_options
#else
#define RELPOS_HAVE_AVX2_COPY 0
#endif

namespace scalar {
#define RELPOS_AVX2 0
#define RELPOS_AVX512 0
#include "cpu_kernel_impl.h"
#undef RELPOS_AVX512
#undef RELPOS_AVX2
}  // namespace scalar

bool cpu_has_avx2() {
#if RELPOS_HAVE_AVX2_COPY
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if RELPOS_HAVE_AVX2_COPY
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

// The copy `simd` asks for ("auto": the widest this CPU runs).
std::string chosen_simd(c10::string_view simd) {
  if (simd != "auto") return std::string(simd);
  return cpu_has_avx512() ? "avx512" : (cpu_has_avx2() ? "avx2" : "scalar");
}

// The out variant with the kernel copy chosen by `simd`: "auto" (the widest the CPU runs), "avx512", "avx2" or
// "scalar". The public op uses "auto"; the internal op exposes the choice so tests can compare the copies.
void extract_patches_out_cpu_simd(const at::Tensor& data, const at::Tensor& meta, const at::Tensor& plan,
                                  int64_t seed, c10::string_view color, const at::Tensor& out,
                                  c10::string_view simd) {
  TORCH_CHECK_VALUE(data.is_cpu() && meta.is_cpu() && plan.is_cpu() && out.is_cpu(),
                    "the CPU op needs data, meta, plan and out on the CPU, got ", data.device(), ", ", meta.device(),
                    ", ", plan.device(), ", ", out.device());
  TORCH_CHECK_VALUE(simd == "auto" || simd == "avx512" || simd == "avx2" || simd == "scalar",
                    "simd must be 'auto', 'avx512', 'avx2' or 'scalar', got '", std::string(simd), "'");
  const std::string copy = chosen_simd(simd);
  TORCH_CHECK(copy != "avx2" || cpu_has_avx2(), "simd='avx2' but this CPU or build has no AVX2 kernel");
  TORCH_CHECK(copy != "avx512" || cpu_has_avx512(), "simd='avx512' but this CPU or build has no AVX-512 kernel");
  check_out(out, plan);
  check_out_disjoint(out, data, "data");
  check_out_disjoint(out, meta, "meta");
  check_out_disjoint(out, plan, "plan");
  // The tables are checked and then read while the GIL is released: work from private copies, so that nothing
  // (another thread, or memory shared with another argument) can change them between the check and the use.
  const at::Tensor meta_copy = meta.clone();
  const at::Tensor plan_copy = plan.clone();
  check_extract_args(data, meta_copy, plan_copy, out.size(2), out.scalar_type());
  const int code = color_code(std::string(color));
  const int64_t strides[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  const uint8_t* bytes = data.data_ptr<uint8_t>();
  const int64_t* m = meta_copy.data_ptr<int64_t>();
  const int32_t* p = plan_copy.data_ptr<int32_t>();
  const int patch = static_cast<int>(out.size(2));
#if RELPOS_HAVE_AVX2_COPY
  if (copy == "avx512")
    return avx512::run_kernel(bytes, m, p, plan.size(0), patch, static_cast<uint64_t>(seed), code, out, strides);
  if (copy == "avx2")
    return avx2::run_kernel(bytes, m, p, plan.size(0), patch, static_cast<uint64_t>(seed), code, out, strides);
#endif
  scalar::run_kernel(bytes, m, p, plan.size(0), patch, static_cast<uint64_t>(seed), code, out, strides);
}

void extract_patches_out_cpu(const at::Tensor& data, const at::Tensor& meta, const at::Tensor& plan, int64_t seed,
                             c10::string_view color, const at::Tensor& out) {
  extract_patches_out_cpu_simd(data, meta, plan, seed, color, out, "auto");
}

#define RELPOS_STRINGIFY_(...) #__VA_ARGS__
#define RELPOS_STRINGIFY(x) RELPOS_STRINGIFY_(x)

// How this extension was built, as "key=value" pairs joined by ';' (relpos.backends.build_info parses it).
std::string build_info() {
  std::string info;
#if defined(_OPENMP)
  info += "openmp=" RELPOS_STRINGIFY(_OPENMP);
#else
  info += "openmp=off";
#endif
  info += RELPOS_HAVE_AVX2_COPY ? ";simd_compiled=avx512,avx2,scalar" : ";simd_compiled=scalar";
  info += ";simd_used=" + chosen_simd("auto");
#if defined(RELPOS_WITH_CUDA) && defined(RELPOS_CUDA_ARCHS)
  info += ";cuda_archs=" RELPOS_STRINGIFY(RELPOS_CUDA_ARCHS);
#elif defined(RELPOS_WITH_CUDA)
  info += ";cuda_archs=unknown";
#else
  info += ";cuda_archs=";
#endif
  return info;
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
  // The CPU out variant with an explicit kernel copy ('auto', 'avx2', 'scalar'), to compare the copies.
  m.def(
      "extract_patches_out_cpu_simd(Tensor data, Tensor meta, Tensor plan, int seed, str color, Tensor(a!) out, "
      "str simd) -> ()");
  m.def("build_info() -> str", &build_info);
  // The flag kernels raise when a device-resident plan has a row out of range (csrc/plan_guard.h).
  m.def("plan_error_flag(Device device) -> Tensor", &plan_error_flag);
}

TORCH_LIBRARY_IMPL(relpos, CompositeExplicitAutograd, m) {
  m.impl("extract_patches", &extract_patches);
}

TORCH_LIBRARY_IMPL(relpos, CPU, m) {
  m.impl("extract_patches_out", &extract_patches_out_cpu);
  m.impl("extract_patches_out_cpu_simd", &extract_patches_out_cpu_simd);
}

}  // namespace relpos
