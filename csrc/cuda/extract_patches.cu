// CUDA kernel of relpos::extract_patches: one thread block renders one patch, phase by phase, from the
// torch-free phases of staged_phases.h (which the CPU harness tests/cuda_phases_harness.cpp runs too): the
// tap tables once per patch, the source window staged in shared memory, separable resampling passes, the float
// patch kept on chip for the float64 sums, then one normalised store. Compiled with --fmad=false so the
// rounding is that of the C++ op and the reference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "extract_patches_cuda.h"
#include "staged_phases.h"

namespace relpos {
namespace {

// 32 warps and at most 64 registers: one block per SM holds 50% of the SM's warps; shared memory (four
// (P + 2) x P float buffers, 150 KB at P = 96) allows one block per SM on sm_80 and sm_90 in any case.
constexpr int kThreads = 1024;

// Runs the phases of staged_phases.h with real barriers. The block sum is a shuffle-down tree per warp (of the
// warps that summed: staged::sum_threads), then the same tree over those warps in warp 0 (staged::tree_sum32
// is this order on the CPU).
struct BlockExec {
  int active = 0;  // threads taking part in the barriers: 0 for the whole block, else the first `active` (within)

  __device__ __forceinline__ void barrier() {
    if (active) {  // named barrier 1 among the first `active` threads (whole warps): the others have left
      asm volatile("bar.sync 1, %0;" : : "r"(active) : "memory");
    } else {
      __syncthreads();
    }
  }

  template <typename F>
  __device__ __forceinline__ void phase(F&& f) {
    f(static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
    barrier();
  }

  // body in the first n threads (whole warps) of those taking part so far; the others skip it (nothing follows a
  // within in its callers: they leave the kernel). One call of body: each call site is a copy of the phases.
  template <typename F>
  __device__ __forceinline__ void within(int n, F&& body) {
    const int outer = active;
    if (n < (outer ? outer : static_cast<int>(blockDim.x))) {
      if (static_cast<int>(threadIdx.x) >= n) return;
      active = n;
    }
    body();
    active = outer;
  }

  // f's Sums summed over the block; finish(total) runs in one thread and every thread gets its result.
  template <typename F, typename G>
  __device__ __forceinline__ auto reduce(F&& f, G&& finish, double* scratch) -> decltype(finish(staged::Sums{})) {
    using Result = decltype(finish(staged::Sums{}));
    const staged::Sums mine = f(static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sum_warps = staged::sum_threads(static_cast<int>(blockDim.x)) >> 5, warps = sum_warps;
    if (warp < sum_warps) {  // the other warps summed nothing
      for (int k = 0; k < 6; ++k) {
        double v = mine.v[k];
        for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
        if (lane == 0) scratch[warp * 6 + k] = v;
      }
    }
    barrier();
    Result* result = reinterpret_cast<Result*>(scratch + staged::kReduceDoubles);
    if (warp == 0) {
      staged::Sums total;
      for (int k = 0; k < 6; ++k) {
        double v = lane < warps ? scratch[lane * 6 + k] : 0.0;
        for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
        total.v[k] = v;
      }
      if (lane == 0) *result = finish(total);
    }
    barrier();
    return *result;
  }
};

template <typename Out>
__global__ void __launch_bounds__(kThreads, 1) extract_patches_kernel(ExtractParams p, staged::Layout layout) {
  extern __shared__ __align__(16) unsigned char smem[];
  BlockExec exec;
  staged::render_patch<Out>(exec, smem, layout, p, blockIdx.x);
}

// Patches too large for the staged buffers: each pixel computed twice by relpos_math.h (register-heavy, so a
// smaller block and its own register budget).
constexpr int kPixelThreads = 256;

template <typename Out>
__global__ void __launch_bounds__(kPixelThreads) extract_patches_per_pixel_kernel(ExtractParams p, staged::Layout layout) {
  __shared__ __align__(16) unsigned char smem[staged::kMinWindow];
  BlockExec exec;
  staged::render_patch_per_pixel<Out>(exec, smem, layout, p, blockIdx.x);
}

template <typename Out>
cudaError_t launch(const ExtractParams& params, const staged::Layout& layout, cudaStream_t stream) {
  if (!layout.staged) {
    extract_patches_per_pixel_kernel<Out><<<static_cast<unsigned>(params.num_patches), kPixelThreads, 0, stream>>>(params, layout);
    return cudaGetLastError();
  }
  auto* kernel = &extract_patches_kernel<Out>;
  if (layout.total > 48 * 1024) {  // beyond the default limit shared memory must be asked for
    const cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(layout.total));
    if (error != cudaSuccess) return error;
  }
  kernel<<<static_cast<unsigned>(params.num_patches), kThreads, layout.total, stream>>>(params, layout);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_extract_patches(const ExtractParams& params, cudaStream_t stream) {
  if (params.num_patches == 0) return cudaSuccess;
  int device = 0, optin = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) error = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (error != cudaSuccess) return error;
  // The whole per-block budget: the part beyond the buffers is the window, larger windows stay on chip.
  const staged::Layout layout = staged::make_layout(params.patch, kThreads, optin);
  switch (params.out_type) {
    case kOutFloat32:
      return launch<staged::OutF32>(params, layout, stream);
    case kOutBFloat16:
      return launch<staged::OutBF16>(params, layout, stream);
    case kOutFloat16:
      return launch<staged::OutF16>(params, layout, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace relpos
