// CUDA kernel of relpos::extract_patches: one thread block renders one patch from the ragged uint8 images.
// Pass 1 sums the channels in double (order-independent results, like every other backend), a block
// reduction gives mean and RMS scale, pass 2 recomputes each pixel and writes it normalised. The per-pixel
// math is relpos_math.h, shared with the CPU implementation. Compiled with --fmad=false so the rounding is
// that of the CPU and reference backends.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../relpos_math.h"
#include "extract_patches_cuda.h"

namespace relpos {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T convert(float v);
template <>
__device__ __forceinline__ float convert<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half convert<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums six doubles over the block; every thread gets the totals.
__device__ void block_sum(double values[6]) {
  __shared__ double partial[kThreads / 32][6];
  __shared__ double total[6];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < 6; ++k) {
    const double v = warp_sum(values[k]);
    if (lane == 0) partial[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < 6) {
    double s = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) s += partial[w][threadIdx.x];
    total[threadIdx.x] = s;
  }
  __syncthreads();
  for (int k = 0; k < 6; ++k) values[k] = total[k];
}

template <typename out_t>
__global__ void __launch_bounds__(kThreads) extract_patches_kernel(ExtractParams p) {
  const int64_t n = blockIdx.x;
  const int32_t* row = p.plan + n * kPlanColumns;
  const int64_t* m = p.meta + int64_t{row[kImage]} * kMetaColumns;
  const ImageView image{p.data + m[kOffset], m[kRows], m[kCols], m[kStrideC], m[kStrideY], m[kStrideX]};
  const PatchGeometry g = make_geometry(image, row, p.patch);
  const int kept = row[kChannel];
  const int pixels = p.patch * p.patch;

  double sums[6] = {0, 0, 0, 0, 0, 0};  // sum[0..2], sum of squares[0..2]
  for (int pix = threadIdx.x; pix < pixels; pix += kThreads) {
    float v[3];
    pixel_values(g, p.color, kept, p.seed, static_cast<uint32_t>(n), pix / p.patch, pix % p.patch, v);
    for (int c = 0; c < 3; ++c) {
      sums[c] += v[c];
      sums[3 + c] += static_cast<double>(v[c]) * v[c];
    }
  }
  block_sum(sums);
  PatchStats stats;
  for (int c = 0; c < 3; ++c) {
    stats.sum[c] = sums[c];
    stats.sum_sq[c] = sums[3 + c];
  }
  float mean[3], scale;
  finish_stats(stats, p.color, kept, pixels, mean, &scale);

  out_t* base = static_cast<out_t*>(p.out) + n * p.out_strides[0];
  for (int pix = threadIdx.x; pix < pixels; pix += kThreads) {
    const int py = pix / p.patch, px = pix % p.patch;
    float v[3];
    pixel_values(g, p.color, kept, p.seed, static_cast<uint32_t>(n), py, px, v);
    for (int c = 0; c < 3; ++c)
      base[c * p.out_strides[1] + py * p.out_strides[2] + px * p.out_strides[3]] = convert<out_t>((v[c] - mean[c]) * scale);
  }
}

}  // namespace

cudaError_t launch_extract_patches(const ExtractParams& params, cudaStream_t stream) {
  if (params.num_patches == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(params.num_patches));
  switch (params.out_type) {
    case kOutFloat32:
      extract_patches_kernel<float><<<grid, kThreads, 0, stream>>>(params);
      break;
    case kOutBFloat16:
      extract_patches_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(params);
      break;
    case kOutFloat16:
      extract_patches_kernel<__half><<<grid, kThreads, 0, stream>>>(params);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace relpos
