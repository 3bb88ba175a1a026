// The CUDA kernel of relpos::extract_patches as barrier-separated phases. One thread block renders one patch:
//
//   header     the plan row (checked), the image size and the source window, by thread 0 for all
//   taps       resize taps (first index, weight) per output row and column, for the crop and, for down-sampled
//              patches, for the down (P -> d) and up (d -> P) steps, computed once per patch
//   noise      the noise channels of a colour-dropped patch, drawn by the threads beyond the first 512 while
//              those make the taps and render the kept channel (the phases below, up to the sums)
//   per rendered channel:
//     stage    the channel's source window, copied to shared memory with coalesced loads (if it fits)
//     h pass   horizontal blend of every needed source row (from the window, or from global memory)
//     v pass   vertical blend: the crop (for a down-sampled patch, crop -> small -> wide -> P x P)
//   sums       the float64 channel sums over the patch held in shared memory (colour projection in place)
//   store      normalise and write, four elements per store where aligned (NCHW and channels-last)
//
// Every phase is a torch-free function of (thread index, threads per block, shared buffer, parameters) that
// reads only what earlier phases wrote: the kernel runs them between __syncthreads() (BlockExec in
// extract_patches.cu), tests/cuda_phases_harness.cpp runs them for every thread of a block in several orders on
// the CPU. The control flow between phases (render_patch) depends only on the plan row and on shared memory
// written before the last barrier, so it is the same in every thread.
//
// The floats are those of the C++ op (csrc/cpu_kernel_impl.h), operation for operation: horizontal blend
// wx0 * a + wx1 * b of a source row, then wy0 * h0 + wy1 * h1; the small image by blend(); the up-sampling
// separable; noise from relpos_math.h; sums v and v * v in double. Compiled with --fmad=false (device) and
// -ffp-contract=off (host), so no multiply-add is fused. The double sums are added in another order than on
// the CPU, which changes the float mean or scale only if a sum lies within a few double ulps of a float
// rounding boundary (as for the Triton kernel).
//
// Patches whose buffers do not fit the shared memory budget (large patch sizes) take the per-pixel path:
// every pixel computed by relpos_math.h's nested evaluation, once for the sums and once for the store.
#pragma once
#include <stdint.h>

#include "../relpos_math.h"
#include "extract_params.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

// The phase loops stay rolled on the device: one copy of each loop body, so the SASS maps one to one onto the
// source lines (benchmarks/cuda_line_counts.py weights each instruction by its line's count); 32 resident warps
// hide latency without unrolling.
#if defined(__CUDACC__)
#define RELPOS_ROLLED _Pragma("unroll 1")
#else
#define RELPOS_ROLLED
#endif

namespace relpos {
namespace staged {

// Division by a runtime divisor d in [1, 2^31) for numerators in [0, 2^31): a multiply-high, an add and a
// shift (the method of PyTorch's IntDivider), instead of a division subroutine in the inner loops.
struct FastDiv {
  uint32_t divisor, multiplier, shift;
};

RELPOS_HD FastDiv make_fastdiv(uint32_t d) {
  FastDiv f;
  f.divisor = d;
  f.shift = 0;
  while (f.shift < 32 && (uint32_t{1} << f.shift) < d) ++f.shift;
  const uint64_t one = 1;
  f.multiplier = static_cast<uint32_t>(((one << 32) * ((one << f.shift) - d)) / d + 1);
  return f;
}

RELPOS_HD uint32_t fast_div(const FastDiv& f, uint32_t n) {
  const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(n) * f.multiplier) >> 32);
  return static_cast<uint32_t>((static_cast<uint64_t>(high) + n) >> f.shift);
}

// A resize tap as stored in shared memory: first index and second weight. The second index and first weight
// follow exactly as linear_taps makes them: i1 = min(i0 + 1, in_size - 1), w0 = 1 - w1.
struct Tap {
  int i0;
  float w1;
};

RELPOS_HD Tap pack_tap(const Taps& t) { return Tap{t.i0, t.w1}; }

RELPOS_HD Taps unpack_tap(Tap t, int in_size) {
  Taps r;
  r.i0 = t.i0;
  r.i1 = t.i0 + 1 < in_size ? t.i0 + 1 : in_size - 1;
  r.w1 = t.w1;
  r.w0 = 1.f - t.w1;
  return r;
}

// An output row of the crop in the v pass: byte offsets of its two h rows (from the h buffer), and their weights.
struct VRow {
  int o0, o1;
  float w0, w1;
};

constexpr int kBuffers = 4;          // float buffers of (P + 2) x P: three final channels and one to work in
constexpr int kMaxWarps = 32;        // 1024 threads
constexpr int kReduceDoubles = (kMaxWarps + 1) * 6;  // warp partial sums and totals, then finish's result
// Threads that take part in the sums (the first ones of the block): each sums 9 x 4 pixels at P = 96, so the
// block sum's shuffle tree runs in 8 warps instead of 32 (it costs ~100 instructions per thread).
constexpr int kSumThreads = 256;
RELPOS_HD int sum_threads(int T) { return T < kSumThreads ? T : kSumThreads; }
// Threads that take part in the staging and resampling passes (kWorkThreads) and in the store (kNarrowThreads),
// the first ones of the block, the others having left (render_patch): every phase pays a per-thread set-up (its
// thread-to-work mapping, tap loads, 64-bit addresses) of ~30-100 instructions, against only 2-9 elements per
// thread at 1024 threads and P = 96. The price: 16 warps (8 in the store) issue in those phases, not 32; the
// passes keep four independent columns per thread in flight. Macros so benchmarks/cuda_variants.sh can time
// other splits on a GPU (NVCC_APPEND_FLAGS=-DRELPOS_WORK_THREADS=...) without editing this file.
#ifndef RELPOS_WORK_THREADS
#define RELPOS_WORK_THREADS 512
#endif
#ifndef RELPOS_NARROW_THREADS
#define RELPOS_NARROW_THREADS 256
#endif
constexpr int kWorkThreads = RELPOS_WORK_THREADS;
constexpr int kNarrowThreads = RELPOS_NARROW_THREADS;
static_assert(kNarrowThreads <= kWorkThreads && kSumThreads <= kWorkThreads,
              "the sums and the store run in threads that the resampling passes keep (render_channels)");
static_assert(kWorkThreads % 32 == 0 && kNarrowThreads % 32 == 0 && kSumThreads % 32 == 0,
              "the threads that split and within keep are whole warps (barrier thread counts)");
RELPOS_HD int work_threads(int T) { return T < kWorkThreads ? T : kWorkThreads; }
RELPOS_HD int narrow_threads(int T) { return T < kNarrowThreads ? T : kNarrowThreads; }
// The threads that take part in the sums or the store (finish_patch runs in these only).
RELPOS_HD int finish_threads(int T) { return sum_threads(T) > narrow_threads(T) ? sum_threads(T) : narrow_threads(T); }
constexpr int64_t kMinWindow = 2048;  // bytes; also the block reduction's scratch (kReduceDoubles doubles + Norm)
constexpr int64_t kHeaderBytes = 128;  // the patch's Header

// Where everything lies in the dynamic shared memory of one block (byte offsets, 16-byte aligned).
struct Layout {
  int patch;
  int threads;
  bool staged;           // false: the per-pixel path (only the reduction scratch is used)
  int buffer_rows;       // rows of P floats per buffer: P + 2 (every source row of a crop that is not shrunk)
  int64_t buffer_bytes;  // buffer b starts at b * buffer_bytes
  int64_t crop_x;                    // Tap[P]: the crop's column taps
  int64_t down, up;                  // Taps[P]: down-sampling (P -> d) and up-sampling (d -> P) taps
  int64_t h_rows;                    // int[2P]: the source row (from the window's first) of each h pass slot
  int64_t v_rows;                    // VRow[P]: the two h slots each output row of the crop blends
  int64_t header;                    // the patch's Header (below), written by thread 0 in the header phase
  int64_t window, window_bytes;      // the staged source window of one channel; also the reduction scratch
  int64_t total;
  FastDiv by_p, by_q;                // division by P and by P^2, prepared once per launch
  bool quads;                        // P % 4 == 0: column passes take four adjacent columns per thread
  FastDiv by_quads;                  // division by P / 4
};

RELPOS_HD int64_t align16(int64_t x) { return (x + 15) / 16 * 16; }

// The layout for patch size `patch`, `threads` per block (a multiple of 32, at most 1024) and `budget` bytes
// of shared memory per block. Staged when the four buffers, the tap tables and a minimal window fit and the
// patch is at most as wide as the block (each column pass gives every column its own thread).
RELPOS_HD Layout make_layout(int patch, int threads, int64_t budget) {
  Layout L = {};
  L.by_p = make_fastdiv(static_cast<uint32_t>(patch));
  L.by_q = make_fastdiv(static_cast<uint32_t>(patch * patch));
  L.quads = patch % 4 == 0;
  L.by_quads = make_fastdiv(static_cast<uint32_t>(patch / 4 > 0 ? patch / 4 : 1));
  L.patch = patch;
  L.threads = threads;
  L.buffer_rows = patch + 2;
  L.buffer_bytes = align16(int64_t{L.buffer_rows} * patch * 4);
  const int64_t wide_tap_bytes = align16(int64_t{patch} * 16);
  int64_t at = kBuffers * L.buffer_bytes;
  L.crop_x = at, at += align16(int64_t{patch} * 8);
  L.down = at, at += wide_tap_bytes;
  L.up = at, at += wide_tap_bytes;
  L.h_rows = at, at += align16(int64_t{2} * patch * 4);
  L.v_rows = at, at += wide_tap_bytes;
  L.header = at, at += kHeaderBytes;
  L.window = at;
  L.staged = patch <= threads && threads > kWorkThreads && at + kMinWindow <= budget;
  if (!L.staged) {
    L.window = 0;
    L.window_bytes = kMinWindow;
    L.total = kMinWindow;
    return L;
  }
  L.window_bytes = (budget - at) / 16 * 16;
  L.total = at + L.window_bytes;
  return L;
}

// Byte offset of channel c, row y, column x of an image in the packed buffer (64-bit: the buffer may exceed
// 2^31 bytes, and so may any one term).
RELPOS_HD int64_t source_offset(const int64_t* meta_row, int c, int y, int x) {
  return meta_row[kOffset] + c * meta_row[kStrideC] + y * meta_row[kStrideY] + x * meta_row[kStrideX];
}

// Element offset of output element (n, c, y, x) from its strides.
RELPOS_HD int64_t output_offset(const int64_t strides[4], int64_t n, int c, int y, int x) {
  return n * strides[0] + c * strides[1] + y * strides[2] + x * strides[3];
}

// ----------------------------------------------------------------------------------------- output types
// Storage and rounding of each output type; the software conversions are c10's (round to nearest even) and
// the device uses the equivalent intrinsics.
struct OutF32 {
  using storage = float;
  static constexpr int bytes = 4;
  RELPOS_HD static float convert(float v) { return v; }
};

RELPOS_HD uint32_t float_bits(float f) {
  union {
    float f;
    uint32_t u;
  } x;
  x.f = f;
  return x.u;
}

RELPOS_HD float bits_float(uint32_t u) {
  union {
    float f;
    uint32_t u;
  } x;
  x.u = u;
  return x.f;
}

struct OutBF16 {
  using storage = uint16_t;
  static constexpr int bytes = 2;
  RELPOS_HD static uint16_t convert(float v) {
#if defined(__CUDA_ARCH__)
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
#else
    if (v != v) return 0x7FC0;
    const uint32_t bits = float_bits(v);
    return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
#endif
  }
};

struct OutF16 {
  using storage = uint16_t;
  static constexpr int bytes = 2;
  RELPOS_HD static uint16_t convert(float v) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(v));
#else
    // c10::detail::fp16_ieee_from_fp32_value
    const float scale_to_inf = bits_float(0x77800000u), scale_to_zero = bits_float(0x08800000u);
    float base = (fabsf(v) * scale_to_inf) * scale_to_zero;
    const uint32_t w = float_bits(v), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = bits_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = float_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u, mantissa_bits = bits & 0x00000FFFu;
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : exp_bits + mantissa_bits));
#endif
  }
};

// Four consecutive outputs with one store (16 bytes for float32, 8 for 16-bit types); dst is aligned to that.
RELPOS_HD void store4(float* dst, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<float4*>(dst) = make_float4(a, b, c, d);
#else
  dst[0] = a, dst[1] = b, dst[2] = c, dst[3] = d;
#endif
}

RELPOS_HD void store4(uint16_t* dst, uint16_t a, uint16_t b, uint16_t c, uint16_t d) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint2*>(dst) = make_uint2(a | (uint32_t{b} << 16), c | (uint32_t{d} << 16));
#else
  dst[0] = a, dst[1] = b, dst[2] = c, dst[3] = d;
#endif
}

// Eight consecutive 16-bit outputs with one 16-byte store; dst is aligned to that.
RELPOS_HD void store8(uint16_t* dst, const uint16_t v[8]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = make_uint4(v[0] | (uint32_t{v[1]} << 16), v[2] | (uint32_t{v[3]} << 16),
                                              v[4] | (uint32_t{v[5]} << 16), v[6] | (uint32_t{v[7]} << 16));
#else
  for (int k = 0; k < 8; ++k) dst[k] = v[k];
#endif
}

// Four consecutive floats from shared memory with one load; p is 16-byte aligned.
RELPOS_HD void load4(const float* p, float& a, float& b, float& c, float& d) {
#if defined(__CUDA_ARCH__)
  const float4 q = *reinterpret_cast<const float4*>(p);
  a = q.x, b = q.y, c = q.z, d = q.w;
#else
  a = p[0], b = p[1], c = p[2], d = p[3];
#endif
}

// Element c (0, 1 or 2) of a channel triple (planes, means), selected rather than indexed: an indexed array in
// registers would go to GPU local memory.
template <typename T>
RELPOS_HD T by_channel(const T* v, int c) { return c == 0 ? v[0] : (c == 1 ? v[1] : v[2]); }

// A table entry (Taps, VRow) or header (PlanRow) of shared memory, 16-byte aligned, with one load per 16 bytes: the
// compiler cannot know the alignment from the structs' 4-byte members (it loads them word by word).
template <typename Entry>
RELPOS_HD Entry load_entry(const Entry* p) {
  static_assert(sizeof(Entry) % 16 == 0, "16-byte words");
#if defined(__CUDA_ARCH__)
  Entry e;
  for (int k = 0; k < static_cast<int>(sizeof(Entry) / 16); ++k) {
    const int4 q = reinterpret_cast<const int4*>(p)[k];
    memcpy(reinterpret_cast<unsigned char*>(&e) + 16 * k, &q, 16);
  }
  return e;
#else
  return *p;
#endif
}

// Four bytes with one store; dst is 4-byte aligned.
RELPOS_HD void store_bytes4(uint8_t* dst, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint32_t*>(dst) = a | (b << 8) | (c << 16) | (d << 24);
#else
  dst[0] = static_cast<uint8_t>(a), dst[1] = static_cast<uint8_t>(b), dst[2] = static_cast<uint8_t>(c);
  dst[3] = static_cast<uint8_t>(d);
#endif
}

// uint8 -> float, exact: the bits of 2^23 + v minus 2^23 (two full-rate instructions instead of a conversion).
RELPOS_HD float byte_to_float(uint32_t v) { return bits_float(0x4B000000u | v) - 8388608.0f; }

// ------------------------------------------------------------------------------------------ per patch
// What every thread knows about the patch it renders: read from the plan row and the image table, plus the
// window and pass mode (the Header's, from the header phase).
struct Patch {
  int64_t n;
  bool out_of_range;  // the plan row was out of range: the placeholder row is rendered instead
  const uint8_t* data;
  const int64_t* meta_row;
  int rows, cols;  // source image
  PatchGeometry g;
  int kept, color, P, Q;
  uint64_t seed;
  // Read from the Window after the header phase (read_window):
  int wr0, wr1, wc0, wc1;  // source window rows [wr0, wr1], columns [wc0, wc1]
  int window_cols;  // the window's width (its row stride in shared memory: window_stride())
  bool staged_window;      // the window of one channel fits the shared memory window
  bool dense;              // h pass rows are source rows wr0.. (every one needed); else two per output row
  FastDiv by_quads, by_d;  // division by the window's 4-byte words per row and by the down size
  int64_t origin;          // Window::origin
};

// The per-patch choices every thread needs, computed once (thread 0, header phase) and read after the barrier.
struct Window {
  int wr0, wr1, wc0, wc1;
  int staged_window, dense;
  FastDiv by_quads, by_d;
  int64_t origin;  // byte offset of channel 0's window corner in the packed buffer (64-bit arithmetic, once)
  int64_t unused;  // to a whole number of 16-byte words (load_entry)
};


// The patch's plan row (checked: the placeholder row if it was out of range) and its image's size, as thread 0
// reads them in the header phase (and every thread of the per-pixel path).
struct PlanRow {
  int32_t row[kPlanColumns];
  int32_t out_of_range;
  int32_t rows, cols;  // of the source image
  int32_t unused[2];   // to a whole number of 16-byte words (load_entry)
};

static_assert(sizeof(PlanRow) == 48, "three 16-byte words");

// What thread 0 writes in the header phase and every thread reads after it (at Layout::header), so that the
// others neither load and check the plan row nor compute the window themselves.
struct Header {
  PlanRow plan;
  Window window;
};

static_assert(sizeof(Header) <= kHeaderBytes, "the patch's Header");

// The image table's row of the image a plan row reads.
RELPOS_HD const int64_t* image_meta(const ExtractParams& p, const int32_t* row) {
  return p.meta + int64_t{row[kImage]} * kMetaColumns;
}

RELPOS_HD PlanRow read_plan_row(const ExtractParams& p, int64_t n) {
  PlanRow r;
  // One read of the row into registers, then checked and used: a plan rewritten meanwhile (another stream) cannot
  // pass the check with one value and be used with another.
  for (int k = 0; k < kPlanColumns; ++k) r.row[k] = p.plan[n * kPlanColumns + k];
  r.out_of_range = !plan_row_in_range(r.row, p.num_images, p.patch);
  if (r.out_of_range) plan_placeholder_row(p.patch, r.row);
  const int64_t* meta_row = image_meta(p, r.row);
  r.rows = static_cast<int>(meta_row[kRows]);
  r.cols = static_cast<int>(meta_row[kCols]);
  r.unused[0] = r.unused[1] = 0;
  return r;
}

RELPOS_HD Patch make_patch(const ExtractParams& p, int64_t n, const PlanRow& r) {
  Patch s = {};
  s.n = n;
  s.out_of_range = r.out_of_range != 0;
  s.meta_row = image_meta(p, r.row);
  s.data = p.data;
  s.rows = r.rows;
  s.cols = r.cols;
  const ImageView image{p.data + s.meta_row[kOffset], r.rows, r.cols, s.meta_row[kStrideC], s.meta_row[kStrideY],
                        s.meta_row[kStrideX]};
  s.g = make_geometry(image, r.row, p.patch);
  s.kept = r.row[kChannel];
  s.color = p.color;
  s.P = p.patch;
  s.Q = p.patch * p.patch;
  s.seed = p.seed;
  return s;
}

RELPOS_HD Patch make_patch(const ExtractParams& p, int64_t n) { return make_patch(p, n, read_plan_row(p, n)); }

// Thread 0 of a patch whose row was out of range raises the caller's flag (atomically on the device: many blocks).
RELPOS_HD void report_out_of_range(int t, bool out_of_range, int* flag) {
  if (t != 0 || !out_of_range || flag == nullptr) return;
#if defined(__CUDA_ARCH__)
  atomicOr(flag, 1);
#else
  *flag |= 1;
#endif
}

template <typename T>
RELPOS_HD T* at(unsigned char* smem, int64_t offset) {
  return reinterpret_cast<T*>(smem + offset);
}

// The window and the h pass mode (thread 0 of the header phase): the rows and columns the crop's taps reach.
RELPOS_HD Window make_window(const ExtractParams& p, const PlanRow& r, const Layout& L) {
  const int* row = r.row;
  const Taps top = linear_taps(row[kTop], r.rows, row[kHeight]);
  const Taps bottom = linear_taps(row[kTop] + p.patch - 1, r.rows, row[kHeight]);
  const Taps left = linear_taps(row[kLeft], r.cols, row[kWidth]);
  const Taps right = linear_taps(row[kLeft] + p.patch - 1, r.cols, row[kWidth]);
  Window w;
  w.wr0 = top.i0, w.wr1 = bottom.i1, w.wc0 = left.i0, w.wc1 = right.i1;
  const int quads = (w.wc1 - w.wc0 + 4) / 4;  // 4-byte words per window row
  // with a spare word after the rows: the h pass reads the byte after a clamped tap's (phase_h)
  w.staged_window = int64_t{w.wr1 - w.wr0 + 1} * quads * 4 + 4 <= L.window_bytes;
  w.dense = w.wr1 - w.wr0 + 1 <= L.buffer_rows;
  w.by_quads = make_fastdiv(static_cast<uint32_t>(quads));
  w.by_d = make_fastdiv(static_cast<uint32_t>(row[kDown] > 0 ? row[kDown] : 1));
  w.origin = source_offset(image_meta(p, row), 0, w.wr0, w.wc0);
  w.unused = 0;
  return w;
}

// The window's row stride in shared memory: its width rounded up to 4 bytes (derived where used rather than kept
// in a register across the phases: the kernel is at its 64-register cap).
RELPOS_HD int window_stride(const Patch& s) { return (s.window_cols + 3) & ~3; }

RELPOS_HD void read_window(Patch& s, unsigned char* smem, const Layout& L) {
  const Window w = load_entry(&at<Header>(smem, L.header)->window);
  s.wr0 = w.wr0, s.wr1 = w.wr1, s.wc0 = w.wc0, s.wc1 = w.wc1;
  s.window_cols = w.wc1 - w.wc0 + 1;
  s.staged_window = w.staged_window != 0;
  s.dense = w.dense != 0;
  s.by_quads = w.by_quads;
  s.by_d = w.by_d;
  s.origin = w.origin;
}

// Phase (thread 0): the patch's Header, from the plan row and the image table; the others read it after the barrier.
RELPOS_HD void phase_header(int t, int /*block_threads*/, unsigned char* smem, const Layout& L, const ExtractParams& p,
                            int64_t n) {
  if (t != 0) return;
  const PlanRow r = read_plan_row(p, n);
  Header* header = at<Header>(smem, L.header);
  header->plan = r;
  header->window = make_window(p, r, L);
  report_out_of_range(t, r.out_of_range != 0, p.plan_error);
}

// Phase (the work threads): the tap tables, one entry per thread: output row i of the crop (its v pass row and h
// pass slots), column i of the crop, and for down-sampled patches up-sampling tap i and down-sampling tap i.
RELPOS_HD void phase_taps(int t, int block_threads, unsigned char* smem, const Layout& L, const Patch& s) {
  const int T = work_threads(block_threads);
  if (t >= T) return;
  const int P = s.P, D = s.g.down;
  RELPOS_ROLLED
  for (int k = t; k < 4 * P; k += T) {
    const int table = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(k))), i = k - table * P;
    if (table == 0) {
      // The h pass slots and the v pass rows as tables, so that neither pass branches on the mode. Dense: slot k is
      // source row wr0 + k (one band). Otherwise slots 2i and 2i + 1 hold the two source rows of output row i, in
      // bands of buffer_rows / 2 output rows whose slots count from the band's first row.
      const Window& w = at<Header>(smem, L.header)->window;
      const int wr0 = w.wr0;
      const bool dense = w.dense != 0;
      const int band_rows = L.buffer_rows / 2;
      const Taps ty = linear_taps(s.g.top + i, s.rows, s.g.resized_rows);
      int* slots = at<int>(smem, L.h_rows) + 2 * i;
      slots[0] = dense ? 2 * i : ty.i0 - wr0;
      slots[1] = dense ? 2 * i + 1 : ty.i1 - wr0;
      const int pair = 2 * (i - i / band_rows * band_rows);
      at<VRow>(smem, L.v_rows)[i] = VRow{(dense ? ty.i0 - wr0 : pair) * P * 4, (dense ? ty.i1 - wr0 : pair + 1) * P * 4,
                                         ty.w0, ty.w1};
    } else if (table == 1) {
      at<Tap>(smem, L.crop_x)[i] = pack_tap(linear_taps(s.g.left + i, s.cols, s.g.resized_cols));
    } else if (D > 0) {
      if (table == 2) {
        at<Taps>(smem, L.up)[i] = linear_taps(i, D, P);
      } else if (i < D) {
        at<Taps>(smem, L.down)[i] = linear_taps(i, P, D);
      }
    }
  }
}

// Phase: noise of channel c (elements c * Q ... c * Q + Q - 1 of the patch) into dst, one Philox block of four
// values per thread and step; a block that straddles two channels is drawn for each (at most two per patch).
RELPOS_HD void phase_noise(int t, int T, float* dst, const Patch& s, int c) {
  const uint32_t first = static_cast<uint32_t>(c) * s.Q, count = static_cast<uint32_t>(s.Q);
  const uint32_t first_block = first >> 2, last_block = (first + count - 1) >> 2;
  if ((count & 3) == 0) {  // P even: the channel is whole blocks (one loop per case, so neither branches on it)
    RELPOS_ROLLED
    for (uint32_t block = first_block + t; block <= last_block; block += T) {
      uint32_t words[4];
      philox4x32_10(s.seed, block, static_cast<uint32_t>(s.n), words);
      store4(dst + (block - first_block) * 4, word_to_noise(words[0]), word_to_noise(words[1]),
             word_to_noise(words[2]), word_to_noise(words[3]));  // 16-byte aligned: the channel starts a block
    }
    return;
  }
  RELPOS_ROLLED
  for (uint32_t block = first_block + t; block <= last_block; block += T) {
    uint32_t words[4];
    philox4x32_10(s.seed, block, static_cast<uint32_t>(s.n), words);
    const int64_t e = int64_t{block} * 4 - first;  // element of words[0] within the channel
    for (int k = 0; k < 4; ++k)
      if (e + k >= 0 && e + k < count) dst[e + k] = word_to_noise(words[k]);
  }
}

// Phase: channel c's source window [wr0, wr1] x [wc0, wc1] into shared memory, row after row; consecutive
// threads read consecutive columns (consecutive bytes when the image is planar).
RELPOS_HD void phase_stage(int t, int block_threads, unsigned char* smem, const Layout& L, const Patch& s, int c) {
  const int T = work_threads(block_threads);
  if (t >= T) return;
  uint8_t* window = at<uint8_t>(smem, L.window);
  const int rows = s.wr1 - s.wr0 + 1, cols = s.window_cols, stride = window_stride(s), quads = stride / 4;
  const int64_t sy = s.meta_row[kStrideY], sx = s.meta_row[kStrideX];
  const uint8_t* origin = s.data + (s.origin + c * s.meta_row[kStrideC]);
  // Four bytes of a row per thread and store (columns past the window repeat its last byte: never read).
  auto offsets = [&](int x, int64_t o[4]) {
    for (int k = 0; k < 4; ++k) o[k] = (x + k < cols ? x + k : cols - 1) * sx;
  };
  if (quads <= T) {  // thread t copies word t % quads of every (T / quads)-th row from t / quads
    const int first = static_cast<int>(fast_div(s.by_quads, static_cast<uint32_t>(t)));
    const int step = static_cast<int>(fast_div(s.by_quads, static_cast<uint32_t>(T)));
    const int x = 4 * (t - first * quads);
    const uint8_t* src = origin + first * sy;
    uint8_t* dst = window + first * stride + x;
    const int64_t src_step = step * sy;
    const int dst_step = step * stride;
    // A word inside the window (no clamped column) of an interleaved (HWC) or a planar image: its four bytes at
    // constant offsets from one pointer (immediates of the loads) instead of four 64-bit addresses per row.
    if (x + 3 < cols && sx == 3) {
      const uint8_t* pixels = src + 3 * x;
      RELPOS_ROLLED
      for (int r = first; r < rows; r += step, pixels += src_step, dst += dst_step)
        store_bytes4(dst, pixels[0], pixels[3], pixels[6], pixels[9]);
      return;
    }
    if (x + 3 < cols && sx == 1) {
      const uint8_t* pixels = src + x;
      RELPOS_ROLLED
      for (int r = first; r < rows; r += step, pixels += src_step, dst += dst_step)
        store_bytes4(dst, pixels[0], pixels[1], pixels[2], pixels[3]);
      return;
    }
    int64_t o[4];
    offsets(x, o);
    RELPOS_ROLLED
    for (int r = first; r < rows; r += step, src += src_step, dst += dst_step)
      store_bytes4(dst, src[o[0]], src[o[1]], src[o[2]], src[o[3]]);
    return;
  }
  RELPOS_ROLLED
  for (int e = t; e < rows * quads; e += T) {
    const int r = static_cast<int>(fast_div(s.by_quads, static_cast<uint32_t>(e))), x = 4 * (e - r * quads);
    int64_t o[4];
    offsets(x, o);
    const uint8_t* src = origin + r * sy;
    store_bytes4(window + r * stride + x, src[o[0]], src[o[1]], src[o[2]], src[o[3]]);
  }
}

// Phase: horizontal blend of `slots` source rows into h (rows of P floats). Thread t owns column t % P and
// takes every (T / P)-th slot from t / P, so the column's taps stay in registers.
template <bool kFromWindow>
RELPOS_HD void phase_h(int t, int block_threads, unsigned char* smem, const Layout& L, const Patch& s, int c,
                       int band_begin, int slots, float* h) {
  const int T = work_threads(block_threads);
  if (t >= T) return;
  const int P = s.P;
  const int* rows = at<int>(smem, L.h_rows) + (s.dense ? 0 : 2 * band_begin);
  if (kFromWindow && L.quads) {  // four adjacent columns per thread, one 16-byte store per slot
    const int first = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(t)));
    const int step = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(T)));
    if (first >= step) return;
    const int px = 4 * (t - first * (P / 4));
    const Tap* crop_x = at<Tap>(smem, L.crop_x);
    const Taps a = unpack_tap(crop_x[px], s.cols), b = unpack_tap(crop_x[px + 1], s.cols);
    const Taps c4 = unpack_tap(crop_x[px + 2], s.cols), d = unpack_tap(crop_x[px + 3], s.cols);
    const int xa = a.i0 - s.wc0, xb = b.i0 - s.wc0, xc = c4.i0 - s.wc0, xd = d.i0 - s.wc0;  // window columns
    const uint8_t* window = at<uint8_t>(smem, L.window);
    // A tap's second byte is read as the byte after its first (an immediate offset, one address per tap): the
    // same byte unless the tap is clamped at the image's right edge (i1 == i0), where its weight w1 is 0 and
    // 0 times any byte (finite) adds +0 to w0 times the first (not negative): the same float. The window keeps
    // a spare word after its rows for that read (make_window).
    RELPOS_ROLLED
    for (int slot = first; slot < slots; slot += step) {
      const uint8_t* row = window + rows[slot] * window_stride(s);
      const uint8_t *pa = row + xa, *pb = row + xb, *pc = row + xc, *pd = row + xd;
      store4(h + slot * P + px, a.w0 * byte_to_float(pa[0]) + a.w1 * byte_to_float(pa[1]),
             b.w0 * byte_to_float(pb[0]) + b.w1 * byte_to_float(pb[1]),
             c4.w0 * byte_to_float(pc[0]) + c4.w1 * byte_to_float(pc[1]),
             d.w0 * byte_to_float(pd[0]) + d.w1 * byte_to_float(pd[1]));
    }
    return;
  }
  const int first = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(t)));
  const int step = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(T)));
  if (first >= step) return;
  const int px = t - first * P;
  const Taps tx = unpack_tap(at<Tap>(smem, L.crop_x)[px], s.cols);
  const float wx0 = tx.w0, wx1 = tx.w1;
  if (kFromWindow) {
    const uint8_t* column = at<uint8_t>(smem, L.window) + (tx.i0 - s.wc0);
    RELPOS_ROLLED
    for (int slot = first; slot < slots; slot += step) {
      const uint8_t* pixel = column + rows[slot] * window_stride(s);
      const float v0 = byte_to_float(pixel[0]), v1 = byte_to_float(pixel[1]);  // the byte after: as above
      h[slot * P + px] = wx0 * v0 + wx1 * v1;
    }
  } else {
    const int64_t sy = s.meta_row[kStrideY], sx = s.meta_row[kStrideX];
    const uint8_t* plane = s.data + source_offset(s.meta_row, c, s.wr0, 0);
    const int64_t x0 = tx.i0 * sx, x1 = tx.i1 * sx;
    RELPOS_ROLLED
    for (int slot = first; slot < slots; slot += step) {
      const int64_t row = rows[slot] * sy;
      const float v0 = byte_to_float(plane[row + x0]), v1 = byte_to_float(plane[row + x1]);
      h[slot * P + px] = wx0 * v0 + wx1 * v1;
    }
  }
}

// Phase: vertical blend of output rows [band_begin, band_end) of the crop from the h rows into dst (P x P).
RELPOS_HD void phase_v(int t, int block_threads, unsigned char* smem, const Layout& L, const Patch& s, int band_begin,
                       int band_end, const float* h, float* dst) {
  const int T = work_threads(block_threads);
  if (t >= T) return;
  const int P = s.P;
  const VRow* rows = at<VRow>(smem, L.v_rows);
  if (L.quads) {  // four adjacent columns per thread: 16-byte loads and stores
    const int first = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(t)));
    const int step = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(T)));
    if (first >= step) return;
    const int px = 4 * (t - first * (P / 4));
    // The h rows by byte offsets from the thread's column, the output by a stepped pointer: one add per address.
    const unsigned char* column = reinterpret_cast<const unsigned char*>(h + px);
    float* out = dst + (band_begin + first) * P + px;
    const int out_step = step * P;
    RELPOS_ROLLED
    for (int py = band_begin + first; py < band_end; py += step, out += out_step) {
      const VRow r = load_entry(rows + py);
      float a0, a1, a2, a3, b0, b1, b2, b3;
      load4(reinterpret_cast<const float*>(column + r.o0), a0, a1, a2, a3);
      load4(reinterpret_cast<const float*>(column + r.o1), b0, b1, b2, b3);
      store4(out, r.w0 * a0 + r.w1 * b0, r.w0 * a1 + r.w1 * b1, r.w0 * a2 + r.w1 * b2, r.w0 * a3 + r.w1 * b3);
    }
    return;
  }
  const int first = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(t)));
  const int step = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(T)));
  if (first >= step) return;
  const int px = t - first * P;
  const unsigned char* column = reinterpret_cast<const unsigned char*>(h + px);
  RELPOS_ROLLED
  for (int py = band_begin + first; py < band_end; py += step) {
    const VRow r = load_entry(rows + py);
    dst[py * P + px] = r.w0 * *reinterpret_cast<const float*>(column + r.o0) +
                       r.w1 * *reinterpret_cast<const float*>(column + r.o1);
  }
}

// Phase: the crop (P x P) down-sampled to small (D x D), by blend() like the C++ op.
RELPOS_HD void phase_small(int t, int block_threads, unsigned char* smem, const Layout& L, const Patch& s,
                           const float* crop, float* small) {
  const int T = work_threads(block_threads);
  if (t >= T) return;
  const int P = s.P, D = s.g.down;
  const int first = static_cast<int>(fast_div(s.by_d, static_cast<uint32_t>(t)));
  const int step = static_cast<int>(fast_div(s.by_d, static_cast<uint32_t>(T)));
  if (first >= step) return;
  const int sx = t - first * D;
  const Taps* down = at<Taps>(smem, L.down);
  const Taps tx = down[sx];
  // The column's two taps as a pointer and a distance (1, or 0 where a tap is clamped: d = P), so that each row
  // costs one address per tap row; the output by a pointer stepped along the column.
  const unsigned char* column = reinterpret_cast<const unsigned char*>(crop + tx.i0);
  const int dx = tx.i1 - tx.i0, row_bytes = P * 4;
  float* out = small + first * D + sx;
  const int out_step = step * D;
  RELPOS_ROLLED
  for (int sy = first; sy < D; sy += step, out += out_step) {
    const Taps ty = load_entry(down + sy);
    const float* top = reinterpret_cast<const float*>(column + ty.i0 * row_bytes);
    const float* bottom = reinterpret_cast<const float*>(column + ty.i1 * row_bytes);
    *out = blend(ty, tx, top[0], top[dx], bottom[0], bottom[dx]);
  }
}

// Phase: horizontal up-sampling of every small row to P columns (wide, D x P).
RELPOS_HD void phase_wide(int t, int block_threads, unsigned char* smem, const Layout& L, const Patch& s,
                          const float* small, float* wide) {
  const int T = work_threads(block_threads);
  if (t >= T) return;
  const int P = s.P, D = s.g.down;
  if (L.quads) {  // four adjacent columns per thread, one 16-byte store per small row
    const int first = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(t)));
    const int step = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(T)));
    if (first >= step) return;
    const int px = 4 * (t - first * (P / 4));
    const Taps* up = at<Taps>(smem, L.up);
    const Taps a = up[px], b = up[px + 1], c = up[px + 2], d = up[px + 3];
    const float* row = small + first * D;  // small rows and wide rows by stepped pointers
    float* out = wide + first * P + px;
    const int row_step = step * D, out_step = step * P;
    RELPOS_ROLLED
    for (int sy = first; sy < D; sy += step, row += row_step, out += out_step) {
      store4(out, a.w0 * row[a.i0] + a.w1 * row[a.i1], b.w0 * row[b.i0] + b.w1 * row[b.i1],
             c.w0 * row[c.i0] + c.w1 * row[c.i1], d.w0 * row[d.i0] + d.w1 * row[d.i1]);
    }
    return;
  }
  const int first = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(t)));
  const int step = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(T)));
  if (first >= step) return;
  const int px = t - first * P;
  const Taps tx = at<Taps>(smem, L.up)[px];
  RELPOS_ROLLED
  for (int sy = first; sy < D; sy += step)
    wide[sy * P + px] = tx.w0 * small[sy * D + tx.i0] + tx.w1 * small[sy * D + tx.i1];
}

// Phase: vertical up-sampling of wide to the P x P patch.
RELPOS_HD void phase_up(int t, int block_threads, unsigned char* smem, const Layout& L, const Patch& s,
                        const float* wide, float* dst) {
  const int T = work_threads(block_threads);
  if (t >= T) return;
  const int P = s.P;
  const Taps* up = at<Taps>(smem, L.up);
  if (L.quads) {  // four adjacent columns per thread: 16-byte loads and stores
    const int first = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(t)));
    const int step = static_cast<int>(fast_div(L.by_quads, static_cast<uint32_t>(T)));
    if (first >= step) return;
    const int px = 4 * (t - first * (P / 4));
    // The wide rows by byte offsets from the thread's column (one multiply-add per address), the output by a
    // stepped pointer.
    const unsigned char* column = reinterpret_cast<const unsigned char*>(wide + px);
    const int row_bytes = P * 4, out_step = step * P;
    float* out = dst + first * P + px;
    RELPOS_ROLLED
    for (int py = first; py < P; py += step, out += out_step) {
      const Taps ty = load_entry(up + py);
      float a0, a1, a2, a3, b0, b1, b2, b3;
      load4(reinterpret_cast<const float*>(column + ty.i0 * row_bytes), a0, a1, a2, a3);
      load4(reinterpret_cast<const float*>(column + ty.i1 * row_bytes), b0, b1, b2, b3);
      store4(out, ty.w0 * a0 + ty.w1 * b0, ty.w0 * a1 + ty.w1 * b1, ty.w0 * a2 + ty.w1 * b2, ty.w0 * a3 + ty.w1 * b3);
    }
    return;
  }
  const int first = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(t)));
  const int step = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(T)));
  if (first >= step) return;
  const int px = t - first * P;
  RELPOS_ROLLED
  for (int py = first; py < P; py += step) {
    const Taps ty = load_entry(up + py);
    dst[py * P + px] = ty.w0 * wide[ty.i0 * P + px] + ty.w1 * wide[ty.i1 * P + px];
  }
}

// A thread's share of the patch statistics: sum[0..2], then sum of squares[0..2].
struct Sums {
  double v[6];
};

// Reduction phase (the first sum_threads(T) threads): this thread's sums over its elements of the three channel
// buffers, after the colour projection (done in place: each element is read and written by the same thread).
// Four adjacent pixels per thread and step where P^2 % 4 == 0 (one 16-byte load per buffer: a quarter of the
// loads and loop steps). One loop per case, so that no loop branches on it (and each SASS line belongs to one
// case).
RELPOS_HD Sums phase_sums(int t, int block_threads, float* const values[3], const Patch& s) {
  Sums r = {{0, 0, 0, 0, 0, 0}};
  const int T = sum_threads(block_threads);
  if (t >= T) return r;
  auto add = [&](const float v[3]) {
    for (int c = 0; c < 3; ++c) {
      const double d = v[c];
      r.v[c] += d;
      r.v[3 + c] = add_square(r.v[3 + c], d);
    }
  };
  const bool by4 = (s.Q & 3) == 0;  // the buffers are 16-byte aligned
  if (s.color == kColorDrop && by4) {
    // The noise channels' sums are not used (finish_stats takes their means as 0): only their squares are added.
    // Each accumulator adds the same values in the same order as the loop below, so the same doubles.
    const int n0 = s.kept == 0 ? 1 : 0, n1 = s.kept == 2 ? 1 : 2;
    const float *kept = by_channel(values, s.kept), *noise0 = by_channel(values, n0), *noise1 = by_channel(values, n1);
    double sum = 0, squares = 0, squares0 = 0, squares1 = 0;
    RELPOS_ROLLED
    for (int i = 4 * t; i < s.Q; i += 4 * T) {
      float a[4], b[4], c[4];
      load4(kept + i, a[0], a[1], a[2], a[3]);
      load4(noise0 + i, b[0], b[1], b[2], b[3]);
      load4(noise1 + i, c[0], c[1], c[2], c[3]);
      for (int k = 0; k < 4; ++k) {
        const double d = a[k];
        sum += d;
        squares = add_square(squares, d);
        squares0 = add_square(squares0, static_cast<double>(b[k]));
        squares1 = add_square(squares1, static_cast<double>(c[k]));
      }
    }
    for (int c = 0; c < 3; ++c) {
      r.v[c] = c == s.kept ? sum : 0.0;
      r.v[3 + c] = c == s.kept ? squares : (c == n0 ? squares0 : squares1);
    }
    return r;
  }
  if (s.color == kColorProject && by4) {
    RELPOS_ROLLED
    for (int i = 4 * t; i < s.Q; i += 4 * T) {
      float a[4], b[4], c[4];
      load4(values[0] + i, a[0], a[1], a[2], a[3]);
      load4(values[1] + i, b[0], b[1], b[2], b[3]);
      load4(values[2] + i, c[0], c[1], c[2], c[3]);
      for (int k = 0; k < 4; ++k) {
        float v[3] = {a[k], b[k], c[k]};
        project_green_magenta(v);
        a[k] = v[0], b[k] = v[1], c[k] = v[2];
        add(v);
      }
      store4(values[0] + i, a[0], a[1], a[2], a[3]);
      store4(values[1] + i, b[0], b[1], b[2], b[3]);
      store4(values[2] + i, c[0], c[1], c[2], c[3]);
    }
    return r;
  }
  if (by4) {
    RELPOS_ROLLED
    for (int i = 4 * t; i < s.Q; i += 4 * T) {
      float a[4], b[4], c[4];
      load4(values[0] + i, a[0], a[1], a[2], a[3]);
      load4(values[1] + i, b[0], b[1], b[2], b[3]);
      load4(values[2] + i, c[0], c[1], c[2], c[3]);
      for (int k = 0; k < 4; ++k) {
        const float v[3] = {a[k], b[k], c[k]};
        add(v);
      }
    }
    return r;
  }
  if (s.color == kColorProject) {
    RELPOS_ROLLED
    for (int i = t; i < s.Q; i += T) {
      float v[3] = {values[0][i], values[1][i], values[2][i]};
      project_green_magenta(v);
      values[0][i] = v[0], values[1][i] = v[1], values[2][i] = v[2];
      add(v);
    }
    return r;
  }
  RELPOS_ROLLED
  for (int i = t; i < s.Q; i += T) {
    const float v[3] = {values[0][i], values[1][i], values[2][i]};
    add(v);
  }
  return r;
}

// Normalisation of the patch from the block totals (the same in every thread).
struct Norm {
  float mean[3], scale;
};

static_assert(kReduceDoubles * sizeof(double) + sizeof(Norm) <= kMinWindow, "reduction scratch");

RELPOS_HD Norm make_norm(const Sums& total, const Patch& s) {
  PatchStats stats;
  for (int c = 0; c < 3; ++c) stats.sum[c] = total.v[c], stats.sum_sq[c] = total.v[3 + c];
  Norm norm;
  finish_stats(stats, s.color, s.kept, s.Q, norm.mean, &norm.scale);
  return norm;
}

// Phase: normalise and store. NCHW and channels-last patches are one contiguous run of 3 P^2 elements: each
// thread stores groups of four consecutive ones with one wide store where the run allows (one loop per layout,
// so no loop branches on it); any other layout element by element.
template <typename Out>
RELPOS_HD void phase_store(int t, int block_threads, const ExtractParams& p, const Patch& s,
                           float* const values[3], const Norm& norm, const Layout& L) {
  const int T = narrow_threads(block_threads);
  if (t >= T) return;
  using storage = typename Out::storage;
  const int P = s.P, Q = s.Q, count = 3 * Q;
  const int64_t* st = p.out_strides;
  storage* base = static_cast<storage*>(p.out) + s.n * st[0];
  const bool nchw = st[3] == 1 && st[2] == P && st[1] == Q;
  const bool nhwc = !nchw && st[1] == 1 && st[3] == 3 && st[2] == 3 * int64_t{P};
  const bool wide = (count & 3) == 0 && reinterpret_cast<uintptr_t>(base) % (4 * Out::bytes) == 0;
  const float scale = norm.scale;
  auto plane = [&](int c) { return by_channel(values, c); };
  auto mean = [&](int c) { return by_channel(norm.mean, c); };
  auto value = [&](int c, int i) { return Out::convert((plane(c)[i] - mean(c)) * scale); };
  if constexpr (Out::bytes == 2) {
    // 16-bit outputs: eight elements per 16-byte store, plane by plane (half the loop steps and stores). Its own
    // loop beside the four-wide one rather than one template for both: benchmarks/cuda_line_counts.py weights each
    // SASS instruction by its source line's count, so each line must belong to one path.
    if (nchw && Q % 8 == 0 && reinterpret_cast<uintptr_t>(base) % 16 == 0) {
      for (int c = 0; c < 3; ++c) {
        const float m = mean(c);
        // Each branch starts with a line of its own (once per entry: the count benchmarks/cuda_line_counts.py gives
        // its loop's set-up, from the nearest counted line above the loop).
        if (float_bits(m) != 0u) {
          const float *v = plane(c) + 8 * t, *end = plane(c) + Q;  // pointers stepped: no index arithmetic
          storage* out = base + c * Q + 8 * t;
          RELPOS_ROLLED
          for (; v < end; v += 8 * T, out += 8 * T) {
            float x[8];
            load4(v, x[0], x[1], x[2], x[3]);  // 16-byte aligned: the buffers are, and Q % 8 == 0
            load4(v + 4, x[4], x[5], x[6], x[7]);
            storage y[8];
            for (int k = 0; k < 8; ++k) y[k] = Out::convert((x[k] - m) * scale);
            store8(out, y);
          }
        } else {  // a mean of +0 (every noise channel: finish_stats): x - 0 is x, so no subtraction
          const float *v = plane(c) + 8 * t, *end = plane(c) + Q;  // pointers stepped: no index arithmetic
          storage* out = base + c * Q + 8 * t;
          RELPOS_ROLLED
          for (; v < end; v += 8 * T, out += 8 * T) {
            float x[8];
            load4(v, x[0], x[1], x[2], x[3]);
            load4(v + 4, x[4], x[5], x[6], x[7]);
            storage y[8];
            for (int k = 0; k < 8; ++k) y[k] = Out::convert(x[k] * scale);
            store8(out, y);
          }
        }
      }
      return;
    }
  }
  // (The stepped pointers of the wide loops may run past the plane's or the output's end before the test that
  // ends the loop; they are compared there, never dereferenced.)
  if (nchw && wide) {  // plane by plane, four elements per store (P^2 is a multiple of 4)
    for (int c = 0; c < 3; ++c) {
      const float m = mean(c);
      if (float_bits(m) != 0u) {  // each branch starts with a line of its own (as above)
        const float *v = plane(c) + 4 * t, *end = plane(c) + Q;  // pointers stepped: no index arithmetic
        storage* out = base + c * Q + 4 * t;
        RELPOS_ROLLED
        for (; v < end; v += 4 * T, out += 4 * T) {
          float v0, v1, v2, v3;
          load4(v, v0, v1, v2, v3);  // 16-byte aligned: the buffers are, and Q % 4 == 0
          store4(out, Out::convert((v0 - m) * scale), Out::convert((v1 - m) * scale),
                 Out::convert((v2 - m) * scale), Out::convert((v3 - m) * scale));
        }
      } else {  // a mean of +0: no subtraction (as above)
        const float *v = plane(c) + 4 * t, *end = plane(c) + Q;  // pointers stepped: no index arithmetic
        storage* out = base + c * Q + 4 * t;
        RELPOS_ROLLED
        for (; v < end; v += 4 * T, out += 4 * T) {
          float v0, v1, v2, v3;
          load4(v, v0, v1, v2, v3);
          store4(out, Out::convert(v0 * scale), Out::convert(v1 * scale), Out::convert(v2 * scale),
                 Out::convert(v3 * scale));
        }
      }
    }
    return;
  }
  if (nhwc && wide) {  // element j is channel j % 3 of pixel j / 3
    RELPOS_ROLLED
    for (int j = 4 * t; j < count; j += 4 * T) {
      const int i = j / 3, c = j - 3 * i;
      const storage a = value(c, i);
      const storage b = c < 2 ? value(c + 1, i) : value(0, i + 1);
      const storage d = c == 0 ? value(2, i) : value(c - 1, i + 1);
      const storage e = c == 0 ? value(0, i + 1) : value(c, i + 1);
      store4(base + j, a, b, d, e);
    }
    return;
  }
  if (nchw) {
    RELPOS_ROLLED
    for (int j = t; j < count; j += T) {
      const int c = static_cast<int>(fast_div(L.by_q, static_cast<uint32_t>(j)));
      base[j] = value(c, j - c * Q);
    }
    return;
  }
  if (nhwc) {
    RELPOS_ROLLED
    for (int j = t; j < count; j += T) base[j] = value(j % 3, j / 3);
    return;
  }
  RELPOS_ROLLED
  for (int j = t; j < count; j += T) {
    const int c = static_cast<int>(fast_div(L.by_q, static_cast<uint32_t>(j))), i = j - c * Q;
    const int y = static_cast<int>(fast_div(L.by_p, static_cast<uint32_t>(i)));
    base[c * st[1] + y * st[2] + (i - y * P) * st[3]] = value(c, i);
  }
}

// ------------------------------------------------------------------------------ per-pixel path phases
// For patches whose buffers do not fit: each pixel by relpos_math.h's nested evaluation (the values the
// staged passes compute), once for the sums and again for the store.
RELPOS_HD Sums phase_pixel_sums(int t, int block_threads, const Patch& s, const FastDiv& by_p) {
  Sums r = {{0, 0, 0, 0, 0, 0}};
  const int T = sum_threads(block_threads);  // the threads whose sums the block sum takes
  if (t >= T) return r;
  RELPOS_ROLLED
  for (int i = t; i < s.Q; i += T) {
    const int py = static_cast<int>(fast_div(by_p, static_cast<uint32_t>(i)));
    float v[3];
    pixel_values(s.g, s.color, s.kept, s.seed, static_cast<uint32_t>(s.n), py, i - py * s.P, v);
    for (int c = 0; c < 3; ++c) {
      const double d = v[c];
      r.v[c] += d;
      r.v[3 + c] = add_square(r.v[3 + c], d);
    }
  }
  return r;
}

template <typename Out>
RELPOS_HD void phase_pixel_store(int t, int T, const ExtractParams& p, const Patch& s, const Norm& norm,
                                 const FastDiv& by_p) {
  typename Out::storage* base = static_cast<typename Out::storage*>(p.out);
  RELPOS_ROLLED
  for (int i = t; i < s.Q; i += T) {
    const int py = static_cast<int>(fast_div(by_p, static_cast<uint32_t>(i))), px = i - py * s.P;
    float v[3];
    pixel_values(s.g, s.color, s.kept, s.seed, static_cast<uint32_t>(s.n), py, px, v);
    for (int c = 0; c < 3; ++c)
      base[output_offset(p.out_strides, s.n, c, py, px)] = Out::convert((v[c] - norm.mean[c]) * norm.scale);
  }
}

// ----------------------------------------------------------------------------------------------- driver
// Which buffer holds channel c at the end, and which two it works in (x: h rows, then the small image; y: the
// crop, then the wide image). A plain crop ends in y, a down-sampled one in x. Fixed by colour and down-sampling
// alone, so every thread knows it without shared state: rendered channels take (0, c + 1) or (c, c + 1);
// colour dropping renders one channel in (0, 1) and puts the noise channels in 2 and 3, which the threads beyond
// the work threads fill meanwhile (phase_noise_channels).
RELPOS_HD int work_x(const Patch& s, int c) {
  return s.color != kColorDrop && s.g.down > 0 ? c : 0;
}
RELPOS_HD int work_y(const Patch& s, int c) { return s.color == kColorDrop ? 1 : c + 1; }
RELPOS_HD int home_buffer(const Patch& s, int c) {
  if (!keeps_channel(s.color, s.kept, c)) return c == (s.kept == 0 ? 1 : 0) ? 2 : 3;  // noise: 2, then 3
  return s.g.down > 0 ? work_x(s, c) : work_y(s, c);
}

RELPOS_HD float* buffer_at(unsigned char* smem, const Layout& L, int b) { return at<float>(smem, b * L.buffer_bytes); }

// The sums and the store, in the first finish_threads(T) threads of the block (the only ones they use).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Out, typename Exec>
RELPOS_HD void finish_patch(Exec& exec, unsigned char* smem, const Layout& L, const ExtractParams& p, const Patch& s) {
  float* const values[3] = {buffer_at(smem, L, home_buffer(s, 0)), buffer_at(smem, L, home_buffer(s, 1)),
                            buffer_at(smem, L, home_buffer(s, 2))};
  const Norm norm = exec.reduce([&](int t, int T) { return phase_sums(t, T, values, s); },
                                 [&](const Sums& total) { return make_norm(total, s); }, at<double>(smem, L.window));
  exec.phase([&](int t, int T) { phase_store<Out>(t, T, p, s, values, norm, L); });
}

// The patch's rendered channels, in the first work_threads(T) threads of the block (the others draw the noise
// channels meanwhile: Exec::split). Its control flow runs in those threads only.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Out, typename Exec>
RELPOS_HD void render_channels(Exec& exec, unsigned char* smem, const Layout& L, const ExtractParams& p, Patch& s) {
  exec.phase([&](int t, int T) { phase_taps(t, T, smem, L, s); });
  read_window(s, smem, L);
  const int band_rows = s.dense ? s.P : L.buffer_rows / 2;
#if defined(__CUDACC__)
#pragma unroll 1
#endif
  for (int c = 0; c < 3; ++c) {  // not unrolled: one copy of the channel's phases (a third of the code)
    if (!keeps_channel(s.color, s.kept, c)) continue;
    float* h = buffer_at(smem, L, work_x(s, c));
    float* crop = buffer_at(smem, L, work_y(s, c));
    if (s.staged_window) exec.phase([&](int t, int T) { phase_stage(t, T, smem, L, s, c); });
    for (int begin = 0; begin < s.P; begin += band_rows) {
      const int end = begin + band_rows < s.P ? begin + band_rows : s.P;
      const int slots = s.dense ? s.wr1 - s.wr0 + 1 : 2 * (end - begin);
      exec.phase([&](int t, int T) {
        if (s.staged_window) {
          phase_h<true>(t, T, smem, L, s, c, begin, slots, h);
        } else {
          phase_h<false>(t, T, smem, L, s, c, begin, slots, h);
        }
      });
      exec.phase([&](int t, int T) { phase_v(t, T, smem, L, s, begin, end, h, crop); });
    }
    if (s.g.down > 0) {  // crop (y) -> small (x) -> wide (y) -> patch (x)
      float* small = h;
      float* wide = crop;
      exec.phase([&](int t, int T) { phase_small(t, T, smem, L, s, crop, small); });
      exec.phase([&](int t, int T) { phase_wide(t, T, smem, L, s, small, wide); });
      exec.phase([&](int t, int T) { phase_up(t, T, smem, L, s, wide, small); });
    }
  }
  exec.join();  // the noise channels are drawn
  // The last statement (the threads within lets go leave the kernel); the lambda's body on its own line, so that
  // gcov's count of it is one per call (benchmarks/cuda_line_counts.py).
  exec.within(finish_threads(exec.block_threads()), [&] {
    finish_patch<Out>(exec, smem, L, p, s);
  });
}

// Phase (the threads beyond the work threads, t and T counted from the first of them): the noise channels of a
// colour-dropped patch into their buffers (2 and 3), which nothing the rendering reads or writes.
RELPOS_HD void phase_noise_channels(int t, int T, unsigned char* smem, const Layout& L, const Patch& s) {
  if (s.color != kColorDrop) return;
  for (int c = 0; c < 3; ++c)
    if (c != s.kept) phase_noise(t, T, buffer_at(smem, L, home_buffer(s, c)), s, c);
}

// The phases of one patch. Exec runs a phase for every thread taking part followed by a barrier among them
// (exec.phase(f) with f(t, T), T the block size), and a reduction phase: the block sum of f's Sums in the order
// of BlockExec's warp tree, given to finish by one thread, whose result every thread gets (exec.reduce(f,
// finish, scratch)). exec.split(n, side, main) runs main in the first n threads (barriers among them) and
// side(t - n, T - n) in the others at the same time, which then leave; exec.join() in main waits for side's
// writes. exec.within(n, body) runs body in the first n threads of those taking part, the others leaving. So the
// noise (Philox, arithmetic only) is drawn while the work threads stage and resample the kept channel (memory
// latency), and no thread runs the control flow of phases it has no part in only to wait at their barriers.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Out, typename Exec>
RELPOS_HD void render_patch(Exec& exec, unsigned char* smem, const Layout& L, const ExtractParams& p, int64_t n) {
  exec.phase([&](int t, int T) { phase_header(t, T, smem, L, p, n); });
  Patch s = make_patch(p, n, load_entry(&at<Header>(smem, L.header)->plan));
  // The last statement (the side threads leave the kernel after it); the lambdas' bodies on their own lines.
  exec.split(work_threads(exec.block_threads()),
             [&](int t, int T) {
               phase_noise_channels(t, T, smem, L, s);
             },
             [&] {
               render_channels<Out>(exec, smem, L, p, s);
             });
}

// The per-pixel path (layout not staged): sums, then the store, each pixel computed twice.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Out, typename Exec>
RELPOS_HD void render_patch_per_pixel(Exec& exec, unsigned char* smem, const Layout& L, const ExtractParams& p,
                                      int64_t n) {
  const Patch s = make_patch(p, n);
  const FastDiv& by_p = L.by_p;
  const Norm norm = exec.reduce([&](int t, int T) {
    report_out_of_range(t, s.out_of_range, p.plan_error);
    return phase_pixel_sums(t, T, s, by_p); },
                                 [&](const Sums& total) { return make_norm(total, s); }, at<double>(smem, 0));
  exec.phase([&](int t, int T) { phase_pixel_store<Out>(t, T, p, s, norm, by_p); });
}

// The block sum of BlockExec: a shuffle-down tree within each warp (offsets 16, 8, 4, 2, 1), then the same
// tree over the warps' partial sums (absent warps add 0). The CPU harness applies this to every thread's Sums.
RELPOS_HD double tree_sum32(double lanes[32]) {
  for (int offset = 16; offset > 0; offset >>= 1)
    for (int lane = 0; lane + offset < 32; ++lane) lanes[lane] += lanes[lane + offset];
  return lanes[0];
}

}  // namespace staged
}  // namespace relpos
