// relpos::extract_patches: the op schema (declared once), its argument checks, and the CPU implementation.
// The CUDA implementation registers itself for the same schema in csrc/cuda/extract_patches_binding.cpp.
#include "extract_patches.h"

#include <ATen/Parallel.h>
#include <Python.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <type_traits>
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

at::Tensor empty_patches(int64_t num_patches, int64_t patch_size, at::ScalarType dtype, bool channels_last,
                         const at::Device& device) {
  return at::empty({num_patches, 3, patch_size, patch_size},
                   at::TensorOptions().dtype(dtype).device(device).memory_format(
                       channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

namespace {

// Hot loops are compiled twice, for AVX2 and for the baseline ISA, and picked at load time (GCC/Clang
// function multiversioning); FMA stays off in both, so the rounding is the same as everywhere else.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define RELPOS_HOT __attribute__((target_clones("avx2", "default")))
#else
#define RELPOS_HOT
#endif

// The CPU computes each patch in stages with per-thread buffers: the crop (resize taps computed once per row
// and column), then, if asked, the down- and up-sampled versions. Every value is the same float as the
// nested per-pixel evaluation of relpos_math.h (same taps, same blend order), just not recomputed.
struct PatchBuffers {
  std::vector<Taps> crop_y, crop_x, down_y, down_x, up_y, up_x;
  std::vector<int64_t> x0, x1;
  std::vector<float> wx0, wx1, crop, small, values;
};

RELPOS_HOT void render_channel(const PatchGeometry& g, int c, PatchBuffers& b, float* out) {
  const int P = g.patch;
  int64_t* x0 = b.x0.data();
  int64_t* x1 = b.x1.data();
  float* wx0 = b.wx0.data();
  float* wx1 = b.wx1.data();
  for (int px = 0; px < P; ++px) {  // column taps as byte offsets and weights, in plain arrays
    x0[px] = b.crop_x[px].i0 * g.image.stride_x;
    x1[px] = b.crop_x[px].i1 * g.image.stride_x;
    wx0[px] = b.crop_x[px].w0;
    wx1[px] = b.crop_x[px].w1;
  }
  for (int py = 0; py < P; ++py) {
    const Taps& ty = b.crop_y[py];
    const uint8_t* row0 = g.image.base + c * g.image.stride_c + ty.i0 * g.image.stride_y;
    const uint8_t* row1 = g.image.base + c * g.image.stride_c + ty.i1 * g.image.stride_y;
    float* dst = g.down > 0 ? &b.crop[py * P] : &out[py * P];
    const float wy0 = ty.w0, wy1 = ty.w1;
    for (int px = 0; px < P; ++px) {  // the expression of blend(), written out
      const float v00 = row0[x0[px]], v01 = row0[x1[px]], v10 = row1[x0[px]], v11 = row1[x1[px]];
      dst[px] = wy0 * (wx0[px] * v00 + wx1[px] * v01) + wy1 * (wx0[px] * v10 + wx1[px] * v11);
    }
  }
  if (g.down <= 0) return;
  const int D = g.down;
  for (int sy = 0; sy < D; ++sy) {
    const Taps& ty = b.down_y[sy];
    for (int sx = 0; sx < D; ++sx) {
      const Taps& tx = b.down_x[sx];
      b.small[sy * D + sx] = blend(ty, tx, b.crop[ty.i0 * P + tx.i0], b.crop[ty.i0 * P + tx.i1],
                                   b.crop[ty.i1 * P + tx.i0], b.crop[ty.i1 * P + tx.i1]);
    }
  }
  for (int py = 0; py < P; ++py) {
    const Taps& ty = b.up_y[py];
    for (int px = 0; px < P; ++px) {
      const Taps& tx = b.up_x[px];
      out[py * P + px] = blend(ty, tx, b.small[ty.i0 * D + tx.i0], b.small[ty.i0 * D + tx.i1],
                               b.small[ty.i1 * D + tx.i0], b.small[ty.i1 * D + tx.i1]);
    }
  }
}

// Noise of elements [first, first + count) of patch n into out: the same values as centered_noise, computed
// kLanes Philox blocks at a time in plain arrays so the compiler vectorises the rounds.
RELPOS_HOT void fill_noise(uint64_t seed, uint32_t patch_index, uint32_t first, int count, float* out) {
  constexpr int kLanes = 16;
  const uint32_t k0_start = static_cast<uint32_t>(seed), k1_start = static_cast<uint32_t>(seed >> 32);
  const uint32_t first_block = first >> 2, last_block = (first + count - 1) >> 2;
  for (uint32_t block = first_block; block <= last_block; block += kLanes) {
    uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
    for (int j = 0; j < kLanes; ++j) c0[j] = block + j, c1[j] = patch_index, c2[j] = 0, c3[j] = 0;
    uint32_t k0 = k0_start, k1 = k1_start;
    for (int round = 0; round < 10; ++round) {
      for (int j = 0; j < kLanes; ++j) {
        const uint64_t product_b = static_cast<uint64_t>(0xCD9E8D57u) * c2[j];
        const uint64_t product_a = static_cast<uint64_t>(0xD2511F53u) * c0[j];
        c0[j] = static_cast<uint32_t>(product_b >> 32) ^ c1[j] ^ k0;
        c2[j] = static_cast<uint32_t>(product_a >> 32) ^ c3[j] ^ k1;
        c1[j] = static_cast<uint32_t>(product_b);
        c3[j] = static_cast<uint32_t>(product_a);
      }
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    for (int j = 0; j < kLanes && block + j <= last_block; ++j) {
      const uint32_t words[4] = {c0[j], c1[j], c2[j], c3[j]};
      for (int k = 0; k < 4; ++k) {
        const int64_t element = (int64_t{block} + j) * 4 + k - first;
        if (element >= 0 && element < count) out[element] = word_to_noise(words[k]);
      }
    }
  }
}

// Sum and sum of squares in double, over eight interleaved partial sums (vectorisable, no long dependency chain).
RELPOS_HOT void channel_sums(const float* values, int count, double* sum, double* sum_sq) {
  constexpr int kParts = 8;
  double s[kParts] = {}, q[kParts] = {};
  int i = 0;
  for (; i + kParts <= count; i += kParts) {
    for (int k = 0; k < kParts; ++k) {
      const double v = values[i + k];
      s[k] += v;
      q[k] += v * v;
    }
  }
  for (; i < count; ++i) {
    const double v = values[i];
    s[0] += v;
    q[0] += v * v;
  }
  double total = 0.0, total_sq = 0.0;
  for (int k = 0; k < kParts; ++k) total += s[k], total_sq += q[k];
  *sum = total;
  *sum_sq = total_sq;
}

RELPOS_HOT void normalise_plane(const float* values, int count, float mean, float scale, float* out) {
  for (int i = 0; i < count; ++i) out[i] = (values[i] - mean) * scale;
}

template <typename out_t>
void extract_cpu_kernel(const uint8_t* data, const int64_t* meta, const int32_t* plan, int64_t num_patches,
                        int patch, uint64_t seed, int color, out_t* out, const int64_t* out_strides) {
  const int pixels = patch * patch;
  at::parallel_for(0, num_patches, 1, [&](int64_t begin, int64_t end) {
    PatchBuffers b;
    b.crop_y.resize(patch), b.crop_x.resize(patch), b.up_y.resize(patch), b.up_x.resize(patch);
    b.down_y.resize(patch), b.down_x.resize(patch);
    b.crop.resize(pixels), b.small.resize(pixels), b.values.resize(3 * static_cast<size_t>(pixels));
    b.x0.resize(patch), b.x1.resize(patch), b.wx0.resize(patch), b.wx1.resize(patch);
    for (int64_t n = begin; n < end; ++n) {
      const int32_t* row = plan + n * kPlanColumns;
      const int64_t* m = meta + int64_t{row[kImage]} * kMetaColumns;
      const ImageView image{data + m[kOffset], m[kRows], m[kCols], m[kStrideC], m[kStrideY], m[kStrideX]};
      const PatchGeometry g = make_geometry(image, row, patch);
      const int kept = row[kChannel];
      for (int i = 0; i < patch; ++i) {
        b.crop_y[i] = linear_taps(g.top + i, static_cast<int>(image.rows), g.resized_rows);
        b.crop_x[i] = linear_taps(g.left + i, static_cast<int>(image.cols), g.resized_cols);
        if (g.down > 0) {
          b.up_y[i] = b.up_x[i] = linear_taps(i, g.down, patch);
          if (i < g.down) b.down_y[i] = b.down_x[i] = linear_taps(i, patch, g.down);
        }
      }
      float* values = b.values.data();
      for (int c = 0; c < 3; ++c) {
        float* plane = values + c * pixels;
        if (keeps_channel(color, kept, c)) {
          render_channel(g, c, b, plane);
        } else {
          fill_noise(seed, static_cast<uint32_t>(n), static_cast<uint32_t>(c * pixels), pixels, plane);
        }
      }
      if (color == kColorProject) {
        for (int i = 0; i < pixels; ++i) {
          float v[3] = {values[i], values[pixels + i], values[2 * pixels + i]};
          project_green_magenta(v);
          values[i] = v[0], values[pixels + i] = v[1], values[2 * pixels + i] = v[2];
        }
      }
      PatchStats stats = {};
      for (int c = 0; c < 3; ++c) channel_sums(values + c * pixels, pixels, &stats.sum[c], &stats.sum_sq[c]);
      float mean[3], scale;
      finish_stats(stats, color, kept, pixels, mean, &scale);
      out_t* base = out + n * out_strides[0];
      for (int c = 0; c < 3; ++c) {
        if constexpr (std::is_same_v<out_t, float>) {
          if (out_strides[3] == 1 && out_strides[2] == patch) {  // NCHW float32: one contiguous plane
            normalise_plane(values + c * pixels, pixels, mean[c], scale, base + c * out_strides[1]);
            continue;
          }
        }
        for (int py = 0; py < patch; ++py)
          for (int px = 0; px < patch; ++px)
            base[c * out_strides[1] + py * out_strides[2] + px * out_strides[3]] =
                static_cast<out_t>((values[c * pixels + py * patch + px] - mean[c]) * scale);
      }
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
