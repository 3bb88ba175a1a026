// CPU harness of the staged CUDA kernel (csrc/cuda/staged_phases.h): runs every phase for every thread index of
// a block, phase by phase (the barrier semantics of __syncthreads), in the thread orders asked for, and
// requires the same output bytes from each order. Built and driven by tests/test_cuda_phases.py, with
// AddressSanitizer and UBSan; that test compares the output with the C++ op bit for bit.
//
//   cuda_phases_harness run INPUT OUTPUT    render a plan (format: see read_input) into OUTPUT
//   cuda_phases_harness selftest            fast division, 64-bit offsets, layouts
//   cuda_phases_harness layout P T BUDGET   the shared memory layout as JSON (for benchmarks/gpu_static.py)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/staged_phases.h"

using namespace relpos;

namespace {

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "cuda_phases_harness: %s\n", message.c_str());
  std::exit(1);
}

// Runs phases like BlockExec: every thread index in `order`, then the next phase. Shared memory is the
// caller's buffer; the block sum follows BlockExec's tree and writes the same scratch words.
struct HostExec {
  std::vector<int> order;
  int threads;
  std::function<void()> pending;  // split's side, until it runs

  int block_threads() const { return threads; }

  HostExec(std::vector<int> thread_order, int block_threads) : order(std::move(thread_order)), threads(block_threads) {}

  template <typename F>
  void phase(F&& f) {
    for (int t : order) f(t, threads);
  }

  // main with the first n threads, side(t - n, threads - n) for the others: BlockExec runs them at the same time
  // and join() in main waits for side, so here side runs either before main (side_first) or at join(); run()
  // renders in thread orders that take both (forward: at join; reverse, shuffled: first), which must give the same
  // bytes.
  bool side_first() const { return !order.empty() && order.front() != 0; }

  template <typename Side, typename Main>
  void split(int n, Side&& side, Main&& main) {
    const std::vector<int> all = order;
    pending = [&, all] {
      for (int t : all)
        if (t >= n) side(t - n, threads - n);
    };
    if (side_first()) join();
    within(n, main);
    if (pending) fail("split: main never joined the side threads");
  }

  void join() {
    if (!pending) return;
    auto run_side = std::move(pending);
    pending = nullptr;
    run_side();
  }

  // body with the first n threads only (as BlockExec::within: the others have left the kernel).
  template <typename F>
  void within(int n, F&& body) {
    if (threads % 32 == 0 && n % 32 != 0) fail("within/split: not whole warps");
    const std::vector<int> all = order;
    order.clear();
    for (int t : all)
      if (t < n) order.push_back(t);
    body();
    order = all;
  }

  template <typename F, typename G>
  auto reduce(F&& f, G&& finish, double* scratch) -> decltype(finish(staged::Sums{})) {
    using Result = decltype(finish(staged::Sums{}));
    std::vector<staged::Sums> mine(threads);
    for (int t : order) mine[t] = f(t, threads);
    const int warps = staged::sum_threads(threads) / 32;  // the warps that summed
    staged::Sums total;
    for (int k = 0; k < 6; ++k) {
      for (int w = 0; w < warps; ++w) {
        double lanes[32];
        for (int l = 0; l < 32; ++l) lanes[l] = mine[w * 32 + l].v[k];
        scratch[w * 6 + k] = staged::tree_sum32(lanes);
      }
      double lanes[32];
      for (int l = 0; l < 32; ++l) lanes[l] = l < warps ? scratch[l * 6 + k] : 0.0;
      total.v[k] = staged::tree_sum32(lanes);
    }
    Result* result = reinterpret_cast<Result*>(scratch + staged::kReduceDoubles);
    *result = finish(total);
    return *result;
  }
};

struct Input {
  std::vector<uint8_t> data;
  std::vector<int64_t> meta;
  std::vector<int32_t> plan;
  ExtractParams params = {};
  int64_t out_elements = 0, threads = 0, budget = 0, orders = 0, order_seed = 0, out_offset = 0;
};

// INPUT: int64 header {data bytes, images, patches, patch, seed, color, out type, 4 strides, out elements,
// threads, shared memory budget, orders (bit 0 forward, 1 reverse, 2 shuffled), shuffle seed, element offset of
// patch 0 in the output buffer (to test unaligned outputs)}, then data,
// meta (int64), plan (int32).
Input read_input(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f) fail(std::string("cannot open ") + path);
  int64_t h[17];
  if (std::fread(h, sizeof(int64_t), 17, f) != 17) fail("short header");
  Input in;
  in.data.resize(static_cast<size_t>(h[0]));
  in.meta.resize(static_cast<size_t>(h[1] * kMetaColumns));
  in.plan.resize(static_cast<size_t>(h[2] * kPlanColumns));
  if (std::fread(in.data.data(), 1, in.data.size(), f) != in.data.size() ||
      std::fread(in.meta.data(), sizeof(int64_t), in.meta.size(), f) != in.meta.size() ||
      std::fread(in.plan.data(), sizeof(int32_t), in.plan.size(), f) != in.plan.size())
    fail("short input");
  std::fclose(f);
  ExtractParams& p = in.params;
  p.num_patches = h[2];
  p.num_images = h[1];
  p.patch = static_cast<int>(h[3]);
  p.seed = static_cast<uint64_t>(h[4]);
  p.color = static_cast<int>(h[5]);
  p.out_type = static_cast<int>(h[6]);
  for (int d = 0; d < 4; ++d) p.out_strides[d] = h[7 + d];
  in.out_elements = h[11];
  in.threads = h[12];
  in.budget = h[13];
  in.orders = h[14];
  in.order_seed = h[15];
  in.out_offset = h[16];
  return in;
}

// The kernels' plan error flag (ExtractParams::plan_error): raised by a patch whose plan row is out of range.
int plan_error = 0;

template <typename Out>
std::vector<uint8_t> render(const Input& in, const std::vector<int>& order, uint32_t garbage_seed) {
  const int threads = static_cast<int>(in.threads);
  const staged::Layout L = staged::make_layout(in.params.patch, threads, in.budget);
  std::vector<uint8_t> out(static_cast<size_t>(in.out_elements) * Out::bytes, 0xFF);  // NaN in every float type
  ExtractParams p = in.params;
  p.data = in.data.data();
  p.meta = in.meta.data();
  p.plan = in.plan.data();
  p.out = out.data() + in.out_offset * Out::bytes;
  p.plan_error = &plan_error;
  HostExec exec{order, threads};
  std::mt19937 garbage(garbage_seed);
  for (int64_t n = 0; n < p.num_patches; ++n) {
    // Exactly the bytes a block may use (AddressSanitizer sees any access beyond), full of garbage that
    // differs between runs: a phase that reads what no earlier phase wrote changes the output. Seed 0: all bytes
    // 0xFF, NaN in every float type, which a read of unwritten memory cannot hide by a zero weight.
    std::vector<unsigned char> smem(static_cast<size_t>(L.total), 0xFF);
    if (garbage_seed != 0)
      for (auto& b : smem) b = static_cast<unsigned char>(garbage());
    if (L.staged) {
      staged::render_patch<Out>(exec, smem.data(), L, p, n);
    } else {
      staged::render_patch_per_pixel<Out>(exec, smem.data(), L, p, n);
    }
  }
  return out;
}

int run(const char* input, const char* output) {
  const Input in = read_input(input);
  if (in.threads < 32 || in.threads > 1024 || in.threads % 32) fail("threads must be a multiple of 32 up to 1024");
  std::vector<std::vector<int>> orders;
  std::vector<int> forward(static_cast<size_t>(in.threads));
  for (int t = 0; t < in.threads; ++t) forward[t] = t;
  if (in.orders & 1) orders.push_back(forward);
  if (in.orders & 2) orders.emplace_back(forward.rbegin(), forward.rend());
  if (in.orders & 4) {
    std::vector<int> shuffled = forward;
    std::mt19937 rng(static_cast<uint32_t>(in.order_seed));
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    orders.push_back(shuffled);
  }
  if (orders.empty()) fail("no thread order asked for");
  std::vector<uint8_t> first;
  for (size_t k = 0; k < orders.size(); ++k) {
    std::vector<uint8_t> out;
    const uint32_t garbage_seed = k == 0 ? 0 : static_cast<uint32_t>(1000 + k);  // order 0: NaN, the others random
    switch (in.params.out_type) {
      case kOutFloat32: out = render<staged::OutF32>(in, orders[k], garbage_seed); break;
      case kOutBFloat16: out = render<staged::OutBF16>(in, orders[k], garbage_seed); break;
      case kOutFloat16: out = render<staged::OutF16>(in, orders[k], garbage_seed); break;
      default: fail("bad output type");
    }
    if (k == 0) {
      first = out;
    } else if (out != first) {
      fail("thread order " + std::to_string(k) + " gives other bytes than order 0 (a phase reads what another "
           "thread writes in the same phase, or reads shared memory nothing wrote)");
    }
  }
  FILE* f = std::fopen(output, "wb");
  if (!f || std::fwrite(first.data(), 1, first.size(), f) != first.size()) fail("cannot write output");
  std::fclose(f);
  std::printf("rendered %lld patches in %zu thread orders; plan_error=%d\n",
              static_cast<long long>(in.params.num_patches), orders.size(), plan_error);
  return 0;
}

int selftest() {
  // Fast division against the hardware division, for the divisors and numerators the kernel uses and more.
  std::mt19937 rng(7);
  for (uint32_t d = 1; d < 5000; ++d) {
    const staged::FastDiv f = staged::make_fastdiv(d);
    for (uint32_t n = 0; n < 3000; ++n)
      if (staged::fast_div(f, n) != n / d) fail("fast_div " + std::to_string(n) + "/" + std::to_string(d));
    for (int k = 0; k < 50; ++k) {
      const uint32_t n = rng() & 0x7FFFFFFFu;
      if (staged::fast_div(f, n) != n / d) fail("fast_div " + std::to_string(n) + "/" + std::to_string(d));
    }
  }
  for (int k = 0; k < 200000; ++k) {
    const uint32_t d = 1 + (rng() & 0x7FFFFFFEu), n = rng() & 0x7FFFFFFFu;
    if (staged::fast_div(staged::make_fastdiv(d), n) != n / d) fail("fast_div large " + std::to_string(n));
  }
  // 64-bit offsets: terms and sums beyond 2^31 (and 2^32) bytes, against 128-bit arithmetic.
  const int64_t metas[][6] = {{(int64_t{1} << 33) + 5, 32767, 32767, 1, 3 * 32767, 3},
                              {int64_t{3} << 31, 32767, 32767, int64_t{32767} * 32767, 32767, 1},
                              {0, 20000, 30000, 1, 90000, 3}};
  for (const auto& m : metas)
    for (int c = 0; c < 3; ++c)
      for (int y : {0, 1, 17000, static_cast<int>(m[kRows]) - 1})
        for (int x : {0, 1, 25000 % static_cast<int>(m[kCols]), static_cast<int>(m[kCols]) - 1}) {
          const __int128 want = static_cast<__int128>(m[kOffset]) + static_cast<__int128>(c) * m[kStrideC] +
                                static_cast<__int128>(y) * m[kStrideY] + static_cast<__int128>(x) * m[kStrideX];
          if (staged::source_offset(m, c, y, x) != static_cast<int64_t>(want)) fail("source_offset");
        }
  const int64_t strides[4] = {3 * 96 * 96, 1, 3 * 96, 3};
  for (int64_t n : {int64_t{0}, int64_t{77672}, int64_t{2147483646}})
    for (int c = 0; c < 3; ++c) {
      const __int128 want = static_cast<__int128>(n) * strides[0] + c * strides[1] + 95 * strides[2] + 95 * strides[3];
      if (staged::output_offset(strides, n, c, 95, 95) != static_cast<int64_t>(want)) fail("output_offset");
    }
  // Layouts: P = 96 is staged on sm_80 (163 KB) and sm_90 (227 KB) with a window for a 1:1 crop (97 rows of
  // 97 bytes, rows padded to 100).
  for (int64_t budget : {int64_t{166912}, int64_t{232448}}) {
    const staged::Layout L = staged::make_layout(96, 1024, budget);
    if (!L.staged || L.total > budget || L.window_bytes < 97 * 100) fail("layout for P = 96");
  }
  if (staged::make_layout(200, 1024, 232448).staged) fail("P = 200 cannot be staged");
  // The harness itself: a phase that reads a neighbour's element while the neighbour writes it must give
  // different bytes in forward and reverse order, or the order comparison in run() could not catch a race.
  auto racy = [](const std::vector<int>& order) {
    std::vector<int> cells(64, 1);
    HostExec exec{order, 64};
    exec.phase([&](int t, int) { cells[t] = cells[(t + 1) % 64] + t; });
    return cells;
  };
  std::vector<int> forward(64), reverse(64);
  for (int t = 0; t < 64; ++t) forward[t] = t, reverse[t] = 63 - t;
  if (racy(forward) == racy(reverse)) fail("the thread orders do not expose a read-write race");
  // within(n): the phases inside see only threads below n (as on the device, where the others have left), the
  // phases after it the whole block again.
  {
    HostExec exec{reverse, 64};
    std::vector<int> ran(64, 0);
    exec.within(32, [&] { exec.phase([&](int t, int) { ran[t] += 1; }); });
    exec.phase([&](int t, int) { ran[t] += 2; });
    for (int t = 0; t < 64; ++t)
      if (ran[t] != (t < 32 ? 3 : 2)) fail("HostExec::within");
  }
  // split(n, side, main): main's phases see threads below n, side sees the others as (t - n, T - n), before main
  // or at its join() depending on the order.
  for (const auto& order : {forward, reverse}) {
    HostExec exec{order, 64};
    std::vector<int> seen(64, -1), main_ran(64, 0);
    bool side_done_at_join = false;
    exec.split(32, [&](int t, int T) { seen[t + 32] = t + 100 * T; },
               [&] {
                 exec.phase([&](int t, int) { main_ran[t] += 1; });
                 side_done_at_join = seen[32] >= 0;
                 exec.join();
               });
    for (int t = 0; t < 64; ++t)
      if (t < 32 ? main_ran[t] != 1 || seen[t] != -1 : main_ran[t] != 0 || seen[t] != t - 32 + 3200)
        fail("HostExec::split");
    if (side_done_at_join != exec.side_first()) fail("HostExec::split order");
  }
  std::printf("selftest passed\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "run") == 0) return run(argv[2], argv[3]);
  if (argc == 2 && std::strcmp(argv[1], "selftest") == 0) return selftest();
  if (argc == 5 && std::strcmp(argv[1], "layout") == 0) {
    const staged::Layout L = staged::make_layout(std::atoi(argv[2]), std::atoi(argv[3]), std::atoll(argv[4]));
    std::printf("{\"staged\": %s, \"total\": %lld, \"window\": %lld, \"window_bytes\": %lld, \"buffer_bytes\": %lld}\n",
                L.staged ? "true" : "false", static_cast<long long>(L.total), static_cast<long long>(L.window),
                static_cast<long long>(L.window_bytes), static_cast<long long>(L.buffer_bytes));
    return 0;
  }
  std::fprintf(stderr, "usage: %s run INPUT OUTPUT | selftest | layout P THREADS BUDGET\n", argv[0]);
  return 2;
}
