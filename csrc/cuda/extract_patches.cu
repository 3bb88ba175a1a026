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
static_assert(kThreads > staged::kWorkThreads, "the staged kernel draws the noise in the threads beyond the work threads");

// Runs the phases of staged_phases.h with real barriers. The block sum is a shuffle-down tree per warp (of the
// warps that summed: staged::sum_threads), then the same tree over those warps in warp 0 (staged::tree_sum32
// is this order on the CPU).
//
// Barriers: 0 (__syncthreads) while the whole block takes part (the header phase); 1 among the first `active`
// threads after split/within have let the others go (they leave the kernel: split and within end their callers);
// 2 where split's side threads arrive and main's join() waits. Whole warps run each barrier instruction
// (bar.sync / bar.arrive with a thread count, the named barriers of CUTLASS and flash-attention); the
// non-.aligned barrier.sync compiled to ~30 instructions per barrier here.
template <int kBlock>  // the block size the kernel is launched with (a constant: what depends on it folds)
struct BlockExec {
  static_assert(kBlock % 32 == 0, "whole warps");
  int active = 0;  // threads taking part in the barriers: 0 for the whole block, else the first `active`

  __device__ __forceinline__ static constexpr int block_threads() { return kBlock; }

  __device__ __forceinline__ void barrier() {
    if (active) {
      asm volatile("bar.sync 1, %0;" : : "r"(active) : "memory");
    } else {
      __syncthreads();
    }
  }

  // The thread index read anew in every phase (volatile): what a phase derives from it is not hoisted out of the
  // channel loop and kept live across the other phases (registers are capped at 64 in a 1024-thread block).
  __device__ __forceinline__ static int thread_index() {
    int t;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
    return t;
  }

  // The block size as a phase sees it, opaque for the same reason: what a phase derives from it alone (its step
  // through the work) is computed in the phase, not hoisted and kept live (it had spilled).
  __device__ __forceinline__ static int phase_threads() {
    int T;
    asm volatile("mov.u32 %0, %1;" : "=r"(T) : "n"(kBlock));
    return T;
  }

  template <typename F>
  __device__ __forceinline__ void phase(F&& f) {
    f(thread_index(), phase_threads());
    barrier();
  }

  // main in the first n threads (whole warps), barriers among them; side(t - n, T - n) at the same time in the
  // others, which then arrive at barrier 2 without waiting and leave; main's join() waits there for them, after
  // which their shared memory writes are visible to it.
  template <typename Side, typename Main>
  __device__ __forceinline__ void split(int n, Side&& side, Main&& main) {
    const int t = thread_index();
    if (t < n) {
      active = n;
      main();
      active = 0;
      return;
    }
    side(t - n, kBlock - n);
    asm volatile("bar.arrive 2, %0;" : : "n"(kBlock) : "memory");
  }

  __device__ __forceinline__ void join() { asm volatile("bar.sync 2, %0;" : : "n"(kBlock) : "memory"); }

  // body in the first n threads (whole warps) of those taking part so far; the others skip it and leave (within
  // ends its callers). One call of body: each call site is a copy of the phases.
  template <typename F>
  __device__ __forceinline__ void within(int n, F&& body) {
    const int outer = active;
    if (n < (outer ? outer : kBlock)) {
      if (thread_index() >= n) return;
      active = n;
    }
    body();
    active = outer;
  }

  // f's Sums summed over the block; finish(total) runs in one thread and every thread gets its result.
  template <typename F, typename G>
  __device__ __forceinline__ auto reduce(F&& f, G&& finish, double* scratch) -> decltype(finish(staged::Sums{})) {
    using Result = decltype(finish(staged::Sums{}));
    const staged::Sums mine = f(thread_index(), kBlock);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sum_warps = staged::sum_threads(kBlock) >> 5, warps = sum_warps;
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
  BlockExec<kThreads> exec;
  // Nothing may follow: the threads that split and within let go return here and leave.
  staged::render_patch<Out>(exec, smem, layout, p, blockIdx.x);
}

// Patches too large for the staged buffers: each pixel computed twice by relpos_math.h (register-heavy, so a
// smaller block and its own register budget).
constexpr int kPixelThreads = 256;

template <typename Out>
__global__ void __launch_bounds__(kPixelThreads) extract_patches_per_pixel_kernel(ExtractParams p, staged::Layout layout) {
  __shared__ __align__(16) unsigned char smem[staged::kMinWindow];
  BlockExec<kPixelThreads> exec;
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
