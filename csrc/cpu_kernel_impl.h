// The CPU kernel's per-patch loops. extract_patches.cpp includes this file twice, inside two namespaces: once
// compiled for AVX2 (RELPOS_AVX2 = 1, with hand-written Philox and bf16 stores) and once for the baseline ISA
// (RELPOS_AVX2 = 0), and picks one at run time. FMA stays off in both, and every float is computed by the same
// IEEE operations in the same order, so the two copies (and the other backends) agree bit for bit.
// No include guard on purpose; the includer provides <vector>, <atomic>, <immintrin.h>, ATen and relpos_math.h.

// The CPU computes each patch in stages with per-thread buffers: the crop (resize taps computed once per row
// and column), then, if asked, the down- and up-sampled versions. Every value is the same float as the
// nested per-pixel evaluation of relpos_math.h (same taps, same blend order), just not recomputed.
struct PatchBuffers {
  std::vector<Taps> crop_y, crop_x, down_y, down_x, up_y, up_x;
  std::vector<int64_t> x0, x1;
  std::vector<int32_t> tap0, tap1;   // column taps of the down and up passes, as gather indices
  std::vector<uint8_t> narrow_done;  // crop rows whose down-sampled horizontal blend is in `narrow`
  std::vector<float> wx0, wx1, rows, crop, narrow, small, wide, values;
};

// dst[i] = w0 * a[i] + w1 * b[i]: a vertical pass (two products, then the sum; no FMA), eight at a time.
inline void blend_rows(const float* __restrict a, const float* __restrict b, float w0, float w1, int n,
                       float* __restrict dst) {
  int i = 0;
#if RELPOS_AVX2
  const __m256 v0 = _mm256_set1_ps(w0), v1 = _mm256_set1_ps(w1);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_mul_ps(v0, _mm256_loadu_ps(a + i)),
                                            _mm256_mul_ps(v1, _mm256_loadu_ps(b + i))));
#endif
  for (; i < n; ++i) dst[i] = w0 * a[i] + w1 * b[i];
}

// dst[i] = w0[i] * src[i0[i]] + w1[i] * src[i1[i]]: a horizontal pass over a float row, gathering eight at a time.
inline void blend_columns(const float* __restrict src, const int32_t* i0, const int32_t* i1, const float* w0,
                          const float* w1, int n, float* __restrict dst) {
  int i = 0;
#if RELPOS_AVX2
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_i32gather_ps(src, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(i0 + i)), 4);
    const __m256 b = _mm256_i32gather_ps(src, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(i1 + i)), 4);
    _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(w0 + i), a),
                                            _mm256_mul_ps(_mm256_loadu_ps(w1 + i), b)));
  }
#endif
  for (; i < n; ++i) dst[i] = w0[i] * src[i0[i]] + w1[i] * src[i1[i]];
}

// Column taps as plain arrays (indices times `stride`), for blend_columns and the byte gathers.
inline void column_taps(const Taps* taps, int n, int32_t* i0, int32_t* i1, float* w0, float* w1) {
  for (int i = 0; i < n; ++i) i0[i] = taps[i].i0, i1[i] = taps[i].i1, w0[i] = taps[i].w0, w1[i] = taps[i].w1;
}

inline void render_channel(const PatchGeometry& g, int c, PatchBuffers& b, float* out) {
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
  // Separable: the horizontal blend of a source row is computed once and reused by every output row that reads
  // it (consecutive output rows share source rows). The values are those of blend(): same products, same order.
  int cached_row[2] = {-1, -1};
  float* cached[2] = {b.rows.data(), b.rows.data() + P};
  auto horizontal = [&](int y, int keep) -> const float* {  // keep: a row that must stay cached (or -1)
    for (int k = 0; k < 2; ++k)
      if (cached_row[k] == y) return cached[k];
    // Replace the lower row (rows only move down), never the one the caller still holds.
    int k = cached_row[0] == -1 || (cached_row[1] != -1 && cached_row[0] < cached_row[1]) ? 0 : 1;
    if (cached_row[k] == keep && keep != -1) k = 1 - k;
    const uint8_t* row = g.image.base + c * g.image.stride_c + y * g.image.stride_y;
    float* h = cached[k];
    // Scalar on purpose: eight-wide byte gathers (whole-word reads, low byte kept) cut the instructions per
    // element by a fifth but made the op ~15% slower on the AMD EPYC measured here; float gathers
    // (blend_columns) did pay.
    for (int px = 0; px < P; ++px) {
      const float v0 = row[x0[px]], v1 = row[x1[px]];
      h[px] = wx0[px] * v0 + wx1[px] * v1;
    }
    cached_row[k] = y;
    return h;
  };
  for (int py = 0; py < P; ++py) {
    const Taps& ty = b.crop_y[py];
    const float* h0 = horizontal(ty.i0, -1);
    const float* h1 = horizontal(ty.i1, ty.i0);
    blend_rows(h0, h1, ty.w0, ty.w1, P, g.down > 0 ? &b.crop[py * P] : &out[py * P]);
  }
  if (g.down <= 0) return;
  const int D = g.down;
  // Down-sampling, separable too: the horizontal blend of each crop row a small row reads, once ([P, D]), then
  // the vertical blends. The same products in the same order as blend(): wy0 * (wx0 * a + wx1 * b) + ...
  float* narrow = b.narrow.data();
  int32_t* tap0 = b.tap0.data();
  int32_t* tap1 = b.tap1.data();
  column_taps(b.down_x.data(), D, tap0, tap1, wx0, wx1);
  std::fill(b.narrow_done.begin(), b.narrow_done.end(), 0);
  for (int sy = 0; sy < D; ++sy) {
    const Taps& ty = b.down_y[sy];
    for (const int r : {ty.i0, ty.i1}) {
      if (b.narrow_done[r]) continue;
      blend_columns(&b.crop[r * P], tap0, tap1, wx0, wx1, D, narrow + r * D);
      b.narrow_done[r] = 1;
    }
    blend_rows(narrow + ty.i0 * D, narrow + ty.i1 * D, ty.w0, ty.w1, D, &b.small[sy * D]);
  }
  // Up-sampling, separable like the crop: each small row's horizontal blend once, then contiguous vertical blends.
  float* wide = b.wide.data();  // [D, P]
  column_taps(b.up_x.data(), P, tap0, tap1, wx0, wx1);
  for (int sy = 0; sy < D; ++sy) blend_columns(&b.small[sy * D], tap0, tap1, wx0, wx1, P, wide + sy * P);
  for (int py = 0; py < P; ++py) {
    const Taps& ty = b.up_y[py];
    blend_rows(wide + ty.i0 * P, wide + ty.i1 * P, ty.w0, ty.w1, P, &out[py * P]);
  }
}

// Noise of the Philox blocks [first_block, last_block] written to out[4 * block + k - first] where that lies in
// [0, count): the same values as centered_noise, kLanes blocks at a time in plain arrays.
inline void noise_blocks_scalar(uint64_t seed, uint32_t patch_index, uint32_t first, int count, uint32_t first_block,
                                uint32_t last_block, float* out) {
  constexpr int kLanes = 8;
  const uint32_t k0_start = static_cast<uint32_t>(seed), k1_start = static_cast<uint32_t>(seed >> 32);
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

#if RELPOS_AVX2
// hi and lo 32-bit halves of the eight products constant * x (Philox's mulhilo), from two 32x32->64 multiplies.
inline void mulhilo8(__m256i x, __m256i constant, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(x, constant);                         // lanes 0, 2, 4, 6 as 64-bit
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), constant);  // lanes 1, 3, 5, 7
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

inline __m256 words_to_noise8(__m256i words) {  // word_to_noise, eight at a time (exact: top 24 bits fit a float)
  const __m256 value = _mm256_cvtepi32_ps(_mm256_srli_epi32(words, 8));
  return _mm256_sub_ps(_mm256_mul_ps(value, _mm256_set1_ps(1.0f / 16777216.0f)), _mm256_set1_ps(0.5f));
}

// 32 noise values of the 8 Philox blocks from `block`, stored contiguously (block * 4 - first onwards).
inline void noise_32(uint32_t k0_start, uint32_t k1_start, uint32_t block, uint32_t patch_index, float* dst) {
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(block)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i c1 = _mm256_set1_epi32(static_cast<int>(patch_index)), c2 = _mm256_setzero_si256(), c3 = c2;
  const __m256i mul_b = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i mul_a = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  uint32_t k0 = k0_start, k1 = k1_start;
  for (int round = 0; round < 10; ++round) {
    __m256i hi_b, lo_b, hi_a, lo_a;
    mulhilo8(c2, mul_b, &hi_b, &lo_b);
    mulhilo8(c0, mul_a, &hi_a, &lo_a);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c1 = lo_b;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // Transpose the four word vectors so that block j's words land at dst[4j .. 4j + 3].
  const __m256 f0 = words_to_noise8(c0), f1 = words_to_noise8(c1), f2 = words_to_noise8(c2), f3 = words_to_noise8(c3);
  const __m256 t0 = _mm256_unpacklo_ps(f0, f1), t1 = _mm256_unpackhi_ps(f0, f1);
  const __m256 t2 = _mm256_unpacklo_ps(f2, f3), t3 = _mm256_unpackhi_ps(f2, f3);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 0 | 4
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 1 | 5
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 2 | 6
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 3 | 7
  _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(dst + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(dst + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}
#endif

#if RELPOS_AVX512
// mulhilo8 and noise_32 sixteen lanes wide: the same words and floats, transposed across four 128-bit lanes.
inline void mulhilo16(__m512i x, __m512i constant, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(x, constant);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), constant);
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

inline __m512 words_to_noise16(__m512i words) {
  const __m512 value = _mm512_cvtepi32_ps(_mm512_srli_epi32(words, 8));
  return _mm512_sub_ps(_mm512_mul_ps(value, _mm512_set1_ps(1.0f / 16777216.0f)), _mm512_set1_ps(0.5f));
}

// 64 noise values of the 16 Philox blocks from `block`, stored contiguously.
inline void noise_64(uint32_t k0_start, uint32_t k1_start, uint32_t block, uint32_t patch_index, float* dst) {
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(block)),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i c1 = _mm512_set1_epi32(static_cast<int>(patch_index)), c2 = _mm512_setzero_si512(), c3 = c2;
  const __m512i mul_b = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i mul_a = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  uint32_t k0 = k0_start, k1 = k1_start;
  for (int round = 0; round < 10; ++round) {
    __m512i hi_b, lo_b, hi_a, lo_a;
    mulhilo16(c2, mul_b, &hi_b, &lo_b);
    mulhilo16(c0, mul_a, &hi_a, &lo_a);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi_b, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi_a, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c1 = lo_b;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m512 f0 = words_to_noise16(c0), f1 = words_to_noise16(c1), f2 = words_to_noise16(c2),
               f3 = words_to_noise16(c3);
  const __m512 t0 = _mm512_unpacklo_ps(f0, f1), t1 = _mm512_unpackhi_ps(f0, f1);
  const __m512 t2 = _mm512_unpacklo_ps(f2, f3), t3 = _mm512_unpackhi_ps(f2, f3);
  const __m512 u0 = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 0 | 4 | 8 | 12
  const __m512 u1 = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 1 | 5 | 9 | 13
  const __m512 u2 = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));  // blocks 2 | 6 | 10 | 14
  const __m512 u3 = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));  // blocks 3 | 7 | 11 | 15
  const __m512 a = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));  // 0 4 1 5
  const __m512 b = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));  // 2 6 3 7
  const __m512 c = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));  // 8 12 9 13
  const __m512 d = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));  // 10 14 11 15
  _mm512_storeu_ps(dst, _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)));       // 0 1 2 3
  _mm512_storeu_ps(dst + 16, _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));  // 4 5 6 7
  _mm512_storeu_ps(dst + 32, _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(2, 0, 2, 0)));  // 8 9 10 11
  _mm512_storeu_ps(dst + 48, _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 1, 3, 1)));  // 12 13 14 15
}
#endif

// Noise of elements [first, first + count) of patch `patch_index` into out: the values of centered_noise.
inline void fill_noise(uint64_t seed, uint32_t patch_index, uint32_t first, int count, float* out) {
  const uint32_t first_block = first >> 2, last_block = (first + count - 1) >> 2;
#if RELPOS_AVX2
  // Whole groups of 8 blocks that lie inside the range are stored contiguously; the edges go the scalar way.
  const uint32_t inner_begin = (first + 3) >> 2;         // first block whose four elements are all in range
  const uint32_t inner_end = (first + count) >> 2;       // one past the last such block
  uint32_t block = inner_begin;
  if (inner_begin > first_block) noise_blocks_scalar(seed, patch_index, first, count, first_block, first_block, out);
#if RELPOS_AVX512
  for (; block + 16 <= inner_end; block += 16)
    noise_64(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), block, patch_index,
             out + (int64_t{block} * 4 - first));
#endif
  for (; block + 8 <= inner_end; block += 8)
    noise_32(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), block, patch_index,
             out + (int64_t{block} * 4 - first));
  if (block <= last_block) noise_blocks_scalar(seed, patch_index, first, count, block, last_block, out);
#else
  noise_blocks_scalar(seed, patch_index, first, count, first_block, last_block, out);
#endif
}

// Sum and sum of squares in double, over eight interleaved partial sums (vectorisable, no long dependency chain).
inline void channel_sums(const float* values, int count, double* sum, double* sum_sq) {
  constexpr int kParts = 8;
  double s[kParts] = {}, q[kParts] = {};
  int i = 0;
#if RELPOS_AVX2
  // The same eight partial sums, as two vectors of four doubles each (v * v rounded, then added: no FMA).
  __m256d s_lo = _mm256_setzero_pd(), s_hi = s_lo, q_lo = s_lo, q_hi = s_lo;
  for (; i + kParts <= count; i += kParts) {
    const __m256 v = _mm256_loadu_ps(values + i);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    s_lo = _mm256_add_pd(s_lo, lo), s_hi = _mm256_add_pd(s_hi, hi);
    q_lo = _mm256_add_pd(q_lo, _mm256_mul_pd(lo, lo)), q_hi = _mm256_add_pd(q_hi, _mm256_mul_pd(hi, hi));
  }
  _mm256_storeu_pd(s, s_lo), _mm256_storeu_pd(s + 4, s_hi), _mm256_storeu_pd(q, q_lo), _mm256_storeu_pd(q + 4, q_hi);
#endif
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

// (values[i] - mean) * scale into count consecutive elements of dst.
inline void store_plane(const float* values, int count, float mean, float scale, float* dst) {
  for (int i = 0; i < count; ++i) dst[i] = (values[i] - mean) * scale;
}

inline void store_plane(const float* values, int count, float mean, float scale, at::BFloat16* dst) {
  int i = 0;
#if RELPOS_AVX2
  // c10::BFloat16's round-to-nearest-even, eight at a time: NaN -> 0x7FC0, else (bits + 0x7FFF + lsb) >> 16.
  const __m256 m = _mm256_set1_ps(mean), s = _mm256_set1_ps(scale);
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(values + i), m), s);
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_castsi256_si128(packed));
  }
#endif
  for (; i < count; ++i) dst[i] = static_cast<at::BFloat16>((values[i] - mean) * scale);
}

inline void store_plane(const float* values, int count, float mean, float scale, at::Half* dst) {
  for (int i = 0; i < count; ++i) dst[i] = static_cast<at::Half>((values[i] - mean) * scale);
}

template <typename out_t>
void extract_kernel(const uint8_t* data, const int64_t* meta, const int32_t* plan, int64_t num_patches, int patch,
                    uint64_t seed, int color, out_t* out, const int64_t* out_strides) {
  const int pixels = patch * patch;
  // Dynamic scheduling: patches differ in cost (down-sampled ones do more work), so each thread takes small
  // chunks from a shared counter instead of one fixed slice.
  const int64_t chunk = 4;
  std::atomic<int64_t> next{0};
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (num_patches + chunk - 1) / chunk));
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    PatchBuffers b;
    b.crop_y.resize(patch), b.crop_x.resize(patch), b.up_y.resize(patch), b.up_x.resize(patch);
    b.down_y.resize(patch), b.down_x.resize(patch);
    b.crop.resize(pixels), b.narrow.resize(pixels), b.narrow_done.resize(patch), b.small.resize(pixels), b.wide.resize(pixels), b.values.resize(3 * static_cast<size_t>(pixels));
    b.x0.resize(patch), b.x1.resize(patch), b.tap0.resize(patch), b.tap1.resize(patch), b.wx0.resize(patch);
    b.wx1.resize(patch), b.rows.resize(2 * patch);
    for (int64_t begin = next.fetch_add(chunk); begin < num_patches; begin = next.fetch_add(chunk)) {
      const int64_t end = std::min(begin + chunk, num_patches);
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
        const bool planar = out_strides[3] == 1 && out_strides[2] == patch;  // NCHW: each channel one plane
        for (int c = 0; c < 3; ++c) {
          if (planar) {
            store_plane(values + c * pixels, pixels, mean[c], scale, base + c * out_strides[1]);
            continue;
          }
          for (int py = 0; py < patch; ++py)
            for (int px = 0; px < patch; ++px)
              base[c * out_strides[1] + py * out_strides[2] + px * out_strides[3]] =
                  static_cast<out_t>((values[c * pixels + py * patch + px] - mean[c]) * scale);
        }
      }
    }
  });
}

inline void run_kernel(const uint8_t* data, const int64_t* meta, const int32_t* plan, int64_t num_patches, int patch,
                       uint64_t seed, int color, const at::Tensor& out, const int64_t* strides) {
  switch (out.scalar_type()) {  // check_out admits exactly these three
    case at::kFloat:
      return extract_kernel(data, meta, plan, num_patches, patch, seed, color, out.data_ptr<float>(), strides);
    case at::kBFloat16:
      return extract_kernel(data, meta, plan, num_patches, patch, seed, color, out.data_ptr<at::BFloat16>(), strides);
    default:
      return extract_kernel(data, meta, plan, num_patches, patch, seed, color, out.data_ptr<at::Half>(), strides);
  }
}
