// Sampling math and counter-based noise shared by the CPU (C++) and CUDA implementations of
// relpos::extract_patches. Nothing here knows about torch, so both compilers see the same code and the
// two backends cannot drift. The pure-PyTorch spec these functions follow is relpos/reference.py.
#pragma once
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define RELPOS_HD __host__ __device__ __forceinline__
#else
#define RELPOS_HD inline
#endif

namespace relpos {

// Largest image side (source or resized): keeps the exact tap arithmetic of linear_taps inside int32.
constexpr int kMaxSide = 32767;

enum Color : int { kColorNone = 0, kColorDrop = 1, kColorProject = 2 };

// Columns of the int32 [N, 7] plan tensor (see relpos/plan.py).
enum PlanColumn : int { kImage = 0, kHeight = 1, kWidth = 2, kTop = 3, kLeft = 4, kChannel = 5, kDown = 6, kPlanColumns = 7 };

// Whether a plan row can be rendered from a batch of num_images images without reading out of bounds (the
// C++ twin of relpos/plan_guard.py's bad_plan_rows). The CUDA kernel checks device-resident plans with it, so no
// host synchronisation and no separate guard launch is needed.
RELPOS_HD bool plan_row_in_range(const int32_t* row, int64_t num_images, int patch) {
  return row[kImage] >= 0 && row[kImage] < num_images && row[kTop] >= 0 && row[kLeft] >= 0 &&
         row[kHeight] <= kMaxSide && row[kWidth] <= kMaxSide && int64_t{row[kTop]} + patch <= row[kHeight] &&
         int64_t{row[kLeft]} + patch <= row[kWidth] && row[kChannel] >= 0 && row[kChannel] <= 2 && row[kDown] >= 0 &&
         row[kDown] <= patch;
}

// The row rendered in place of one out of range: image 0 resized to the patch itself, every read inside it.
RELPOS_HD void plan_placeholder_row(int patch, int32_t row[kPlanColumns]) {
  for (int k = 0; k < kPlanColumns; ++k) row[k] = 0;
  row[kHeight] = patch;
  row[kWidth] = patch;
}

// Columns of the int64 [B, 6] image table: where each ragged image lies in the flat uint8 buffer.
enum MetaColumn : int { kOffset = 0, kRows = 1, kCols = 2, kStrideC = 3, kStrideY = 4, kStrideX = 5, kMetaColumns = 6 };

// a * b as 64 bits. On the GPU through mul.wide.u32, one IMAD.WIDE.U32 that gives both halves (a high and a low
// product written separately, or a 64-bit multiply, cost an extra instruction per multiply).
RELPOS_HD uint64_t mul_wide32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  uint64_t product;
  asm("mul.wide.u32 %0, %1, %2;" : "=l"(product) : "r"(a), "r"(b));
  return product;
#else
  return static_cast<uint64_t>(a) * b;
#endif
}

// Philox4x32-10 with the constants and counter layout of Triton's tl.randint4x: counter (c0, c1, 0, 0),
// key (seed low word, seed high word); all four output words.
RELPOS_HD void philox4x32_10(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t out[4]) {
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t product0 = mul_wide32(0xD2511F53u, c0), product2 = mul_wide32(0xCD9E8D57u, c2);
    c0 = static_cast<uint32_t>(product2 >> 32) ^ c1 ^ k0;
    c2 = static_cast<uint32_t>(product0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(product2);
    c3 = static_cast<uint32_t>(product0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// Noise in [-0.5, 0.5) from a Philox word: its top 24 bits, exact in float32 on every backend.
// On the GPU as one fma: the product (an integer below 2^24 times 2^-24) is exact, so fused or not the sum is
// rounded once, to the same float (one FFMA instead of FMUL and FADD; the CPU keeps the plain form, where an fma
// without -mfma would be a library call).
RELPOS_HD float word_to_noise(uint32_t word) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(static_cast<float>(word >> 8), 1.0f / 16777216.0f, -0.5f);
#else
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f) - 0.5f;
#endif
}

// q + d * d for d a float widened to double: the square (48 significant bits at most) is exact, so on the GPU one
// DFMA gives the same double as DMUL and DADD.
RELPOS_HD double add_square(double q, double d) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(d, d, q);
#else
  return q + d * d;
#endif
}

// The noise of element `pixel` (c * P * P + y * P + x) of patch `patch`: word (pixel % 4) of the Philox block
// at counter (pixel / 4, patch). One Philox evaluation serves four consecutive elements.
RELPOS_HD float centered_noise(uint64_t seed, uint32_t pixel, uint32_t patch) {
  uint32_t words[4];
  philox4x32_10(seed, pixel >> 2, patch, words);
  const uint32_t k = pixel & 3;  // selected, not indexed: an indexed array would go to GPU local memory
  return word_to_noise(k == 0 ? words[0] : (k == 1 ? words[1] : (k == 2 ? words[2] : words[3])));
}

// One axis of a bilinear resize with align_corners=False (torch's convention): output index dst of out_size
// reads source position (dst + 0.5) * in_size / out_size - 0.5, clamped at 0. The position is computed
// exactly in integers, so the tap indices never depend on float rounding, and the weight is rounded once
// (one IEEE division); every backend therefore gets the same taps bit for bit. Sizes are at most 32767,
// which keeps in_size * (2 * dst + 1) inside int32.
struct Taps {
  int i0, i1;
  float w0, w1;
};

RELPOS_HD Taps linear_taps(int dst, int in_size, int out_size) {
  int numerator = in_size * (2 * dst + 1) - out_size;  // source position times 2 * out_size
  numerator = numerator < 0 ? 0 : numerator;
  const int denominator = 2 * out_size;
  Taps t;
  t.i0 = numerator / denominator;
  if (t.i0 >= in_size - 1) {
    t.i0 = t.i1 = in_size - 1;
    t.w1 = 0.f;
  } else {
    t.i1 = t.i0 + 1;
    t.w1 = static_cast<float>(numerator % denominator) / static_cast<float>(denominator);
  }
  t.w0 = 1.f - t.w1;
  return t;
}

RELPOS_HD float blend(const Taps& ty, const Taps& tx, float v00, float v01, float v10, float v11) {
  return ty.w0 * (tx.w0 * v00 + tx.w1 * v01) + ty.w1 * (tx.w0 * v10 + tx.w1 * v11);
}

struct ImageView {
  const uint8_t* base;
  int64_t rows, cols, stride_c, stride_y, stride_x;
  RELPOS_HD float at(int c, int y, int x) const {
    return static_cast<float>(base[c * stride_c + y * stride_y + x * stride_x]);
  }
};

// What one output patch needs to know: its source image, the virtual resized size, corner and down-size.
struct PatchGeometry {
  ImageView image;
  int resized_rows, resized_cols, top, left, down, patch;
};

RELPOS_HD PatchGeometry make_geometry(ImageView image, const int32_t* plan_row, int patch) {
  PatchGeometry g;
  g.image = image;
  g.resized_rows = plan_row[kHeight];
  g.resized_cols = plan_row[kWidth];
  g.top = plan_row[kTop];
  g.left = plan_row[kLeft];
  g.down = plan_row[kDown];
  g.patch = patch;
  return g;
}

// Pixel (py, px) of the crop of the resized image, channel c: a bilinear read of the source image.
RELPOS_HD float crop_pixel(const PatchGeometry& g, int c, int py, int px) {
  const Taps ty = linear_taps(g.top + py, static_cast<int>(g.image.rows), g.resized_rows);
  const Taps tx = linear_taps(g.left + px, static_cast<int>(g.image.cols), g.resized_cols);
  return blend(ty, tx, g.image.at(c, ty.i0, tx.i0), g.image.at(c, ty.i0, tx.i1), g.image.at(c, ty.i1, tx.i0),
               g.image.at(c, ty.i1, tx.i1));
}

// Pixel (sy, sx) of the crop downsampled to down x down.
RELPOS_HD float small_pixel(const PatchGeometry& g, int c, int sy, int sx) {
  const Taps ty = linear_taps(sy, g.patch, g.down);
  const Taps tx = linear_taps(sx, g.patch, g.down);
  return blend(ty, tx, crop_pixel(g, c, ty.i0, tx.i0), crop_pixel(g, c, ty.i0, tx.i1), crop_pixel(g, c, ty.i1, tx.i0),
               crop_pixel(g, c, ty.i1, tx.i1));
}

// Value of the patch before colour handling: the crop, or the crop down- and up-sampled again.
RELPOS_HD float patch_pixel(const PatchGeometry& g, int c, int py, int px) {
  if (g.down <= 0) return crop_pixel(g, c, py, px);
  const Taps ty = linear_taps(py, g.down, g.patch);
  const Taps tx = linear_taps(px, g.down, g.patch);
  return blend(ty, tx, small_pixel(g, c, ty.i0, tx.i0), small_pixel(g, c, ty.i0, tx.i1), small_pixel(g, c, ty.i1, tx.i0),
               small_pixel(g, c, ty.i1, tx.i1));
}

// Colour projection: remove the green-magenta axis (-1, 2, -1) / sqrt(6) from an RGB value.
RELPOS_HD void project_green_magenta(float v[3]) {
  const float d = (2.0f * v[1] - v[0] - v[2]) / 6.0f;
  v[0] = v[0] + d;
  v[1] = v[1] - 2.0f * d;
  v[2] = v[2] + d;
}

// The three channels of one pixel before normalisation: image content (projected if asked) or, for the
// channels that colour dropping replaces, noise. Dropping reads only the kept channel from the image.
RELPOS_HD void pixel_values(const PatchGeometry& g, int color, int kept, uint64_t seed, uint32_t patch_index, int py,
                            int px, float v[3]) {
  const uint32_t pixel = static_cast<uint32_t>(py * g.patch + px);
  const uint32_t plane = static_cast<uint32_t>(g.patch * g.patch);
  if (color == kColorDrop) {
    const float value = patch_pixel(g, kept, py, px);
    for (int c = 0; c < 3; ++c) v[c] = c == kept ? value : centered_noise(seed, c * plane + pixel, patch_index);
    return;
  }
  for (int c = 0; c < 3; ++c) v[c] = patch_pixel(g, c, py, px);
  if (color == kColorProject) project_green_magenta(v);
}

// Whether channel c of a patch is mean-centred image content (true) or replaced by noise (false).
RELPOS_HD bool keeps_channel(int color, int kept, int c) { return color != kColorDrop || c == kept; }

// Per-patch statistics: channel means and the final scale to RMS 50. Sums are in double so that every
// backend's result is independent of its summation order to well under 1e-4.
struct PatchStats {
  double sum[3];
  double sum_sq[3];
};

RELPOS_HD void finish_stats(const PatchStats& s, int color, int kept, int pixels, float mean[3], float* scale) {
  double total_sq = 0.0;
  for (int c = 0; c < 3; ++c) {
    const double m = s.sum[c] / pixels;
    if (keeps_channel(color, kept, c)) {
      mean[c] = static_cast<float>(m);
      total_sq += s.sum_sq[c] - s.sum[c] * m;
    } else {
      mean[c] = 0.f;
      total_sq += s.sum_sq[c];
    }
  }
  const double mean_sq = total_sq / (3.0 * pixels);
  *scale = static_cast<float>(50.0 / sqrt(mean_sq + 1e-8));
}

}  // namespace relpos
