"""Triton kernel of the fused pixel op: a program renders patches straight from the ragged uint8 images, in
barrier-separated phases that share a per-program scratch buffer in global memory (tap tables and staged images).

Per patch:
  1. tap tables: source offset and weight of each output row and column, for each resampling level, computed
     once (the integer and IEEE divisions of the taps are not repeated per pixel);
  2. crop patches: one pass renders the crop tile by tile from the tables (4 gathers per channel), accumulates
     the float64 channel sums (within each thread: no shuffles or barriers per tile) and stages the float32
     patch; down-sampled patches (DOWN): the crop is staged, then the down x down image is computed once from
     it, then the P x P up-sampling from that, with the sums: staged passes instead of 64 nested taps per
     pixel. The staged images have a guard row and column so that a bilinear read's four values share one
     address (see the DOWN branch of _render);
  3. colour drop renders only the kept channel; the two noise channels are drawn in their own loop, one Philox
     evaluation per four values, straight into the staged planes;
  4. normalise: the staged patch is read back (contiguous) and written centred and scaled in the output dtype,
     16 bytes per store in NCHW and in dense channels-last (whose interleaved values are regrouped in registers
     into runs of consecutive elements: _store_interleaved).

Every float is the one csrc/relpos_math.h computes, by the same IEEE operations in the same order (blend
wy0 * (wx0 * a + wx1 * b) + wy1 * (...), separable halves being exactly its two stages; no FMA contraction: the
launch passes enable_fp_fusion=False), so the output is bit-identical to the C++ op; staging only avoids
recomputing values. relpos/reference.py is the spec. Crop and down-sampled patches are separate
specialisations (DOWN), each with its own tile and register budget. A fixed grid of programs walks the plan, so
the scratch is sized by the grid (launch). This file knows nothing of torch.library; relpos/triton_op.py
registers the op.
"""

import triton
import triton.language as tl

COLOR_NONE, COLOR_DROP, COLOR_PROJECT = 0, 1, 2
TABLES = tl.constexpr(6)  # tap tables per patch: crop rows, crop columns, down rows, down columns, up rows, up columns


@triton.jit
def _taps(dst, in_size, out_size):
    """One axis of a bilinear resize (align_corners=False), tap positions in exact integer arithmetic."""
    numerator = tl.maximum(in_size * (2 * dst + 1) - out_size, 0)
    denominator = 2 * out_size
    i0 = numerator // denominator
    last = i0 >= in_size - 1
    w1 = tl.math.div_rn((numerator % denominator).to(tl.float32), denominator.to(tl.float32))
    w1 = tl.where(last, 0.0, w1)
    i0 = tl.minimum(i0, in_size - 1)
    i1 = tl.where(last, i0, i0 + 1)
    return i0, i1, 1.0 - w1, w1


@triton.jit
def _blend(wy0, wy1, wx0, wx1, v00, v01, v10, v11):
    return wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)


@triton.jit
def _store_table(itab, wtab, table: tl.constexpr, dst, in_size, out_size, count, unit, LANES: tl.constexpr,
                 PAIRED: tl.constexpr = 0):
    """Tap table `table` for outputs dst [LANES] (the first `count` are used): both source offsets (index times
    `unit`, int64) and both weights. The staged passes' tables (2 and up) keep only what they read, in the float
    scratch, so that one address serves the three loads (_load_staged_taps): the first offset (int32 bits: the
    staged images are small) and the second weight."""
    i0, i1, w0, w1 = _taps(dst, in_size, out_size)
    if PAIRED:  # _gather reads a tap's second column at the first plus one pixel. At the last column (i1 == i0,
        # w1 == 0) that would read past the row, so the pair becomes (i0 - 1, i0) weighted (0, 1): 0 * a + 1 * b
        # is b, as 1 * b + 0 * b is (the launcher uses PAIRED only where every image is >= 2 pixels wide)
        last = i1 == i0
        i0 = tl.where(last, i0 - 1, i0)
        w0 = tl.where(last, 0.0, w0)
        w1 = tl.where(last, 1.0, w1)
    used = tl.arange(0, LANES) < count
    where = table * 2 * LANES + tl.arange(0, LANES)
    if table >= 2:
        tl.store(wtab + where, (i0 * unit).to(tl.float32, bitcast=True), mask=used)
        tl.store(wtab + where + LANES, w1, mask=used)
    else:  # the image's taps: both offsets and the two weights' bits as one int64, all in the int64 scratch
        tl.store(itab + where, i0.to(tl.int64) * unit, mask=used)
        tl.store(itab + where + LANES, i1.to(tl.int64) * unit, mask=used)
        bits0 = w0.to(tl.uint32, bitcast=True).to(tl.uint64)
        bits1 = w1.to(tl.uint32, bitcast=True).to(tl.uint64)
        tl.store(itab + 4 * LANES + table * LANES + tl.arange(0, LANES),
                 (bits0 | (bits1 << 32)).to(tl.int64, bitcast=True), mask=used)


@triton.jit
def _load_table(itab, table: tl.constexpr, index, LANES: tl.constexpr):
    """The image's taps (tables 0 and 1): both offsets and both weights, three loads from one address."""
    where = table * 2 * LANES + index
    weights = tl.load(itab + 4 * LANES + table * LANES + index).to(tl.uint64, bitcast=True)
    w0 = (weights & 0xFFFFFFFF).to(tl.uint32).to(tl.float32, bitcast=True)
    w1 = (weights >> 32).to(tl.uint32).to(tl.float32, bitcast=True)
    return tl.load(itab + where), tl.load(itab + where + LANES), w0, w1


@triton.jit
def _load_staged_taps(wtab, table: tl.constexpr, index, LANES: tl.constexpr):
    """A staged pass's taps (table 2 and up): the first offset and both weights (the first, 1 - w1, is computed
    as _taps computed it: the same float)."""
    where = table * 2 * LANES + index
    w1 = tl.load(wtab + where + LANES)
    return tl.load(wtab + where).to(tl.int32, bitcast=True), 1.0 - w1, w1


@triton.jit
def _gather(src, ry, cx, COLUMN_FIRST: tl.constexpr, PAIRED: tl.constexpr):
    """A bilinear read of a uint8 image: row taps ry (byte offsets and weights, [R, 1]) and column taps cx
    ([1, C]). (An image's second taps cannot simply be taken as the next row and column: at its last row and
    column that would read past the image, and past the buffer for the last image; PAIRED below shifts the last
    column's pair instead.) COLUMN_FIRST: the column pointers
    first ([1, C], once per thread and column), so each read adds one 64-bit row offset (2 instructions, not 4);
    it pays for one channel (colour drop); for three, the shared tap sums y + x cost fewer registers. PAIRED (the
    images' common pixel stride, see launch): the second column is the first plus PAIRED bytes (_store_table), so
    each row's two reads share one address, the second an immediate offset: two 64-bit additions per pixel, not
    four."""
    y0, y1, wy0, wy1 = ry
    x0, x1, wx0, wx1 = cx
    if PAIRED:
        column = src + x0
        row0 = column + y0
        row1 = column + y1
        v00 = tl.load(row0).to(tl.float32)
        v01 = tl.load(row0 + PAIRED).to(tl.float32)
        v10 = tl.load(row1).to(tl.float32)
        v11 = tl.load(row1 + PAIRED).to(tl.float32)
    elif COLUMN_FIRST:
        column0 = src + x0
        column1 = src + x1
        v00 = tl.load(column0 + y0).to(tl.float32)
        v01 = tl.load(column1 + y0).to(tl.float32)
        v10 = tl.load(column0 + y1).to(tl.float32)
        v11 = tl.load(column1 + y1).to(tl.float32)
    else:
        v00 = tl.load(src + (y0 + x0)).to(tl.float32)
        v01 = tl.load(src + (y0 + x1)).to(tl.float32)
        v10 = tl.load(src + (y1 + x0)).to(tl.float32)
        v11 = tl.load(src + (y1 + x1)).to(tl.float32)
    return _blend(wy0, wy1, wx0, wx1, v00, v01, v10, v11)


@triton.jit
def _next_tile(ty, tx, tiles_x):
    """The tile after (ty, tx) in row-major order, tiles_x per row: a loop whose tiles_x is not a compile-time
    constant carries its tile's coordinates from trip to trip rather than divide each trip by tiles_x (a signed
    division sequence of ~20 instructions; a constant divisor is a cheap multiply-shift, and _tile does that)."""
    wrap = tx + 1 == tiles_x
    return tl.where(wrap, ty + 1, ty), tl.where(wrap, 0, tx + 1)


@triton.jit
def _clip(py, px, height, width):
    """Tile lanes inside height x width: (rows, columns, mask)."""
    valid = (py < height) & (px < width)
    # every address stays in range; the lanes outside are masked at the stores and in the sums. (Clamping also
    # hides the rows' contiguity from the compiler, which would otherwise re-lay the tile out for vector loads of
    # the row taps at the cost of layout conversions.)
    return tl.minimum(py, height - 1), tl.minimum(px, width - 1), valid


@triton.jit
def _noise_word(word, element, lo, PLANE: tl.constexpr, EXACT: tl.constexpr, squares):
    """One Philox word per block as noise (its top 24 bits) for element, and squares plus its float64 square if
    element lies in [lo, lo + PLANE)."""
    # as fused multiply-adds: u * 2^-24 (u < 2^24) and d * d (a float's square) are exact, so each fma rounds
    # once, where the unfused pair rounds the same sum once too: the same bits in one instruction instead of two
    value = tl.fma((word >> 8).to(tl.float32), 1.0 / 16777216.0, -0.5)
    d = value.to(tl.float64)
    if not EXACT:  # the trips' blocks do not cover the channel exactly
        d = tl.where((element >= lo) & (element < lo + PLANE), d, 0.0)
    return value, tl.fma(d, d, squares)


@triton.jit
def _philox(seed, c0, c1):
    """tl.randint4x(seed, (c1 << 32) | c0): Philox4x32-10, counter (c0, c1, 0, 0), key the seed's two words; each
    round's products taken as one 32 x 32 -> 64-bit multiply, one IMAD.WIDE.U32 on the GPU (randint4x's umulhi and
    separate low product cost two)."""
    seed = seed.to(tl.uint64)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    c2 = c0 * 0
    c3 = c2
    for _ in tl.static_range(10):
        product0 = c0.to(tl.uint64) * 0xD2511F53
        product2 = c2.to(tl.uint64) * 0xCD9E8D57
        c0 = (product2 >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (product0 >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = product2.to(tl.uint32)
        c3 = product0.to(tl.uint32)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _noise_plane(dst, seed, n, c, PATCH: tl.constexpr, NB: tl.constexpr):
    """Noise channel c of patch n into dst[c * P * P:] (planar, so a value's index there is its noise element
    c * P * P + y * P + x): word (element % 4) of Philox4x32-10 at counter (element // 4, patch). Each Philox
    evaluation serves its four consecutive elements (NB evaluations per trip). Returns the float64 partial sums
    of squares ([NB]; the channel's plain sum is not needed: noise is not centred)."""
    PLANE: tl.constexpr = PATCH * PATCH
    TRIPS: tl.constexpr = (PLANE // 4 + (0 if PLANE % 4 == 0 else 2) + NB - 1) // NB  # blocks touching a plane
    EXACT: tl.constexpr = (PLANE % 4 == 0) and ((PLANE // 4) % NB == 0)
    lo = c * PLANE
    first_block = lo >> 2
    squares = tl.zeros([NB], tl.float64)
    for j in tl.range(0, TRIPS, loop_unroll_factor=1):
        block = first_block + j * NB + tl.arange(0, NB)
        w0, w1, w2, w3 = _philox(seed, block.to(tl.uint32), n.to(tl.uint32))
        element = 4 * block
        v0, squares = _noise_word(w0, element, lo, PLANE, EXACT, squares)
        v1, squares = _noise_word(w1, element + 1, lo, PLANE, EXACT, squares)
        v2, squares = _noise_word(w2, element + 2, lo, PLANE, EXACT, squares)
        v3, squares = _noise_word(w3, element + 3, lo, PLANE, EXACT, squares)
        # a block's four values are consecutive elements: one [NB, 4] store (16 bytes per block where aligned)
        values = tl.reshape(tl.join(tl.join(v0, v2), tl.join(v1, v3)), [NB, 4])
        elements = element[:, None] + tl.arange(0, 4)[None, :]
        if EXACT:
            tl.store(dst + elements, values)
        else:
            tl.store(dst + elements, values, mask=(elements >= lo) & (elements < lo + PLANE))
    return squares


@triton.jit
def _cast(value, dtype: tl.constexpr, HARDWARE_BF16: tl.constexpr):
    """float32 -> output dtype, rounding to nearest even. On a GPU that is one conversion (cvt.rn.bf16x2.f32 for
    two bfloat16 values); Triton's CPU interpreter truncates float32 -> bfloat16 whatever rounding is asked for,
    so there (HARDWARE_BF16 false) the rounded top half of the bits is the bfloat16, reinterpreted: the same bits
    for every finite value, in ~4 integer instructions instead of 1/2."""
    if dtype == tl.bfloat16 and not HARDWARE_BF16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return value.to(dtype, fp_downcast_rounding="rtne")


@triton.jit
def _columns(t, RUN: tl.constexpr):
    """The RUN (4 or 8) columns of t [G, RUN], each [G]: in-thread renaming where a thread holds whole rows."""
    G: tl.constexpr = t.shape[0]
    if RUN == 4:
        c02, c13 = tl.split(tl.reshape(t, [G, 2, 2]))
        c0, c2 = tl.split(c02)
        c1, c3 = tl.split(c13)
        return c0, c1, c2, c3
    else:
        even, odd = tl.split(tl.reshape(t, [G, 4, 2]))  # columns 0 2 4 6 | 1 3 5 7
        c04, c26 = tl.split(tl.reshape(even, [G, 2, 2]))
        c15, c37 = tl.split(tl.reshape(odd, [G, 2, 2]))
        c0, c4 = tl.split(c04)
        c2, c6 = tl.split(c26)
        c1, c5 = tl.split(c15)
        c3, c7 = tl.split(c37)
        return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _row4(x0, x1, x2, x3):
    """[G, 4] whose column k is xk (each [G]): _columns' inverse."""
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), [x0.shape[0], 4])


@triton.jit
def _row8(x0, x1, x2, x3, x4, x5, x6, x7):
    """[G, 8] whose column k is xk (each [G]): _columns' inverse."""
    nested = tl.join(tl.join(tl.join(x0, x4), tl.join(x2, x6)), tl.join(tl.join(x1, x5), tl.join(x3, x7)))
    return tl.reshape(nested, [x0.shape[0], 8])


@triton.jit
def _interleaved_runs(v0, v1, v2, RUN: tl.constexpr):
    """The channels-last order of planar values v0, v1, v2 [G, RUN] (RUN consecutive pixels per row): three
    [G, RUN] runs, run r holding the row's interleaved values RUN * r .. RUN * r + RUN - 1."""
    if RUN == 4:
        a0, a1, a2, a3 = _columns(v0, 4)
        b0, b1, b2, b3 = _columns(v1, 4)
        c0, c1, c2, c3 = _columns(v2, 4)
        return _row4(a0, b0, c0, a1), _row4(b1, c1, a2, b2), _row4(c2, a3, b3, c3)
    else:
        a0, a1, a2, a3, a4, a5, a6, a7 = _columns(v0, 8)
        b0, b1, b2, b3, b4, b5, b6, b7 = _columns(v1, 8)
        c0, c1, c2, c3, c4, c5, c6, c7 = _columns(v2, 8)
        return (_row8(a0, b0, c0, a1, b1, c1, a2, b2), _row8(c2, a3, b3, c3, a4, b4, c4, a5),
                _row8(b5, c5, a6, b6, c6, a7, b7, c7))


@triton.jit
def _store_interleaved(base, row_pixel, v0, v1, v2, PLANE: tl.constexpr, RUN: tl.constexpr, dtype: tl.constexpr,
                       HARDWARE_BF16: tl.constexpr, EXACT: tl.constexpr):
    """Dense channels-last store of the normalised planar values v0, v1, v2 [G, RUN] of RUN consecutive pixels per
    row (the first: row_pixel [G, 1]). A row's 3 * RUN values are three runs of RUN consecutive elements (16 bytes
    each: RUN = 8 in 2-byte dtypes, 4 in float32), three 16-byte stores instead of 3 * RUN element stores."""
    runs = _interleaved_runs(v0, v1, v2, RUN)
    k = tl.arange(0, RUN)[None, :]
    for r in tl.static_range(3):
        where = base + (3 * row_pixel + RUN * r + k)
        if EXACT:
            tl.store(where, _cast(runs[r], dtype, HARDWARE_BF16))
        else:  # element e of a row is the row's pixel e // 3
            tl.store(where, _cast(runs[r], dtype, HARDWARE_BF16), mask=row_pixel + (RUN * r + k) // 3 < PLANE)


@triton.jit
def _tile(t, extent_x, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Rows [R, 1] and columns [1, C] of tile t of a square of side extent_x, row-major tiles."""
    tiles_x = (extent_x + COLS - 1) // COLS
    ty = t // tiles_x
    return _tile_at(ty, t - ty * tiles_x, ROWS, COLS)


@triton.jit
def _tile_at(ty, tx, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Rows [R, 1] and columns [1, C] of the tile in tile row ty and tile column tx."""
    return ty * ROWS + tl.arange(0, ROWS)[:, None], tx * COLS + tl.arange(0, COLS)[None, :]


@triton.jit
def _sums(acc, v0, v1, v2, valid, ROWS: tl.constexpr, COLS: tl.constexpr, WARPS: tl.constexpr, FULL: tl.constexpr):
    """Adds a tile's float64 channel sums and sums of squares to acc (six [WARPS, C] partial sums). A warp holds
    rows r = WARPS * k + w of the tile, so summing over k stays within each thread: no shuffles, no barriers."""
    s0, s1, s2, q0, q1, q2 = acc
    d0 = v0.to(tl.float64)
    d1 = v1.to(tl.float64)
    d2 = v2.to(tl.float64)
    if not FULL:
        d0 = tl.where(valid, d0, 0.0)
        d1 = tl.where(valid, d1, 0.0)
        d2 = tl.where(valid, d2, 0.0)
    d0 = tl.reshape(d0, [ROWS // WARPS, WARPS, COLS])
    d1 = tl.reshape(d1, [ROWS // WARPS, WARPS, COLS])
    d2 = tl.reshape(d2, [ROWS // WARPS, WARPS, COLS])
    return (s0 + tl.sum(d0, axis=0), s1 + tl.sum(d1, axis=0), s2 + tl.sum(d2, axis=0),
            _add_squares(q0, d0), _add_squares(q1, d1), _add_squares(q2, d2))


@triton.jit
def _sums1(acc, v, valid, ROWS: tl.constexpr, COLS: tl.constexpr, WARPS: tl.constexpr, FULL: tl.constexpr):
    """_sums for one channel (colour drop's kept channel), into acc's first sum and square."""
    s0, s1, s2, q0, q1, q2 = acc
    d = v.to(tl.float64)
    if not FULL:
        d = tl.where(valid, d, 0.0)
    d = tl.reshape(d, [ROWS // WARPS, WARPS, COLS])
    return s0 + tl.sum(d, axis=0), s1, s2, _add_squares(q0, d), q1, q2


@triton.jit
def _add_squares(q, d):
    """q plus the squares of d [K, WARPS, C] summed over K (within each thread), one fused multiply-add per value:
    a float32's square is exact in float64, so fma(d, d, q) is q + d * d, in one instruction instead of two
    (tl.sum(d * d) multiplies, then adds in a tree). K: 1, 2, 4 or 8."""
    K: tl.constexpr = d.shape[0]
    W: tl.constexpr = d.shape[1]
    C: tl.constexpr = d.shape[2]
    if K == 1:
        x = tl.reshape(d, [W, C])
        return tl.fma(x, x, q)
    elif K == 2:
        x0, x1 = tl.split(tl.permute(d, (1, 2, 0)))
        return tl.fma(x1, x1, tl.fma(x0, x0, q))
    elif K == 4:
        even, odd = tl.split(tl.reshape(tl.permute(d, (1, 2, 0)), [W, C, 2, 2]))  # rows 0 2 | 1 3
        x0, x2 = tl.split(even)
        x1, x3 = tl.split(odd)
        return tl.fma(x3, x3, tl.fma(x2, x2, tl.fma(x1, x1, tl.fma(x0, x0, q))))
    else:
        tl.static_assert(K == 8, "_add_squares: 1, 2, 4 or 8 rows per thread")
        even, odd = tl.split(tl.reshape(tl.permute(d, (1, 2, 0)), [W, C, 2, 2, 2]))  # rows 0 2 4 6 | 1 3 5 7
        e0, e1 = tl.split(even)  # 0 4 | 2 6
        o0, o1 = tl.split(odd)  # 1 5 | 3 7
        x0, x4 = tl.split(e0)
        x2, x6 = tl.split(e1)
        x1, x5 = tl.split(o0)
        x3, x7 = tl.split(o1)
        q = tl.fma(x3, x3, tl.fma(x2, x2, tl.fma(x1, x1, tl.fma(x0, x0, q))))
        return tl.fma(x7, x7, tl.fma(x6, x6, tl.fma(x5, x5, tl.fma(x4, x4, q))))


@triton.jit
def _project(v0, v1, v2):
    """Colour projection: the green-magenta axis (-1, 2, -1) / sqrt(6) removed from an RGB value."""
    d = tl.math.div_rn(2.0 * v1 - v0 - v2, tl.full(v1.shape, 6.0, tl.float32))
    return v0 + d, v1 - 2.0 * d, v2 + d


@triton.jit
def _plan_row(plan, n, num_images, PATCH: tl.constexpr):
    """Plan row n, each column read once, checked as relpos/plan_guard.py's bad_plan_rows does: a row out of range
    for the batch becomes the placeholder (image 0 resized to the patch, at the origin, no down size), so a
    device-resident plan needs no separate guard pass. Returns the seven columns and whether the row was bad."""
    row = plan + n * 7
    image_index = tl.load(row + 0)
    resized_rows = tl.load(row + 1)
    resized_cols = tl.load(row + 2)
    top = tl.load(row + 3)
    left = tl.load(row + 4)
    kept = tl.load(row + 5)
    down = tl.load(row + 6)
    bad = ((image_index < 0) | (image_index >= num_images) | (top < 0) | (left < 0) | (resized_rows > MAX_SIDE)
           | (resized_cols > MAX_SIDE) | (top.to(tl.int64) + PATCH > resized_rows)
           | (left.to(tl.int64) + PATCH > resized_cols) | (kept < 0) | (kept > 2) | (down < 0) | (down > PATCH))
    return (tl.where(bad, 0, image_index), tl.where(bad, PATCH, resized_rows), tl.where(bad, PATCH, resized_cols),
            tl.where(bad, 0, top), tl.where(bad, 0, left), tl.where(bad, 0, kept), tl.where(bad, 0, down), bad)


@triton.jit
def _render(data, meta, row, n, seed, itab, wtab, first, second,
            COLOR: tl.constexpr, PATCH: tl.constexpr, DOWN: tl.constexpr, LANES: tl.constexpr,
            ROWS: tl.constexpr, COLS: tl.constexpr, WARPS: tl.constexpr, NB: tl.constexpr,
            CROP_ROWS: tl.constexpr, PAIRED: tl.constexpr):
    """Phases 1 and 2 for patch n (its checked plan row from _plan_row): tap tables, then the patch (before
    normalisation) into the scratch region `first`, [3, P, P] float32 (DOWN works in `second` too); returns the
    float64 partial sums and the noise channels' squares."""
    PLANE: tl.constexpr = PATCH * PATCH
    image_index, resized_rows, resized_cols, top, left, kept, down, bad = row  # bad: raised by the caller
    image_index = image_index.to(tl.int64)
    m = meta + image_index * 6
    rows = tl.load(m + 1).to(tl.int32)
    cols = tl.load(m + 2).to(tl.int32)
    stride_c = tl.load(m + 3)
    stride_y = tl.load(m + 4)
    stride_x = tl.load(m + 5)
    image = data + tl.load(m + 0)
    if COLOR == 1:  # drop: only the kept channel is read from the image
        image = image + kept.to(tl.int64) * stride_c

    # ---- phase 1: tap tables
    lane = tl.arange(0, LANES)
    _store_table(itab, wtab, 0, top + lane, rows, resized_rows, PATCH, stride_y, LANES)
    _store_table(itab, wtab, 1, left + lane, cols, resized_cols, PATCH, stride_x, LANES, PAIRED)
    if DOWN:
        _store_table(itab, wtab, 2, lane, PATCH, down, down, PATCH + 1, LANES)  # crop rows/cols of each small one
        _store_table(itab, wtab, 3, lane, PATCH, down, down, 1, LANES)
        _store_table(itab, wtab, 4, lane, down, PATCH, PATCH, PATCH + 1, LANES)  # small rows/cols of each output one
        _store_table(itab, wtab, 5, lane, down, PATCH, PATCH, 1, LANES)
    tl.debug_barrier()

    zero = tl.zeros([WARPS, COLS], tl.float64)
    acc = (zero, zero, zero, zero, zero, zero)
    noise = (tl.zeros([NB], tl.float64), tl.zeros([NB], tl.float64))  # colour drop: the noise channels' squares
    FULL: tl.constexpr = (PATCH % ROWS == 0) and (PATCH % COLS == 0)
    NUM_TILES: tl.constexpr = ((PATCH + ROWS - 1) // ROWS) * ((PATCH + COLS - 1) // COLS)
    if not DOWN:
        # ---- phase 2 (crop): the crop, coloured, summed and staged in one pass
        kept_plane = first + kept * PLANE  # colour drop's plane, added once: each store then adds a 32-bit offset
        for t in tl.range(0, NUM_TILES, loop_unroll_factor=1):
            py, px = _tile(t, PATCH, ROWS, COLS)
            py, px, valid = _clip(py, px, PATCH, PATCH)
            ry = _load_table(itab, 0, py, LANES)
            cx = _load_table(itab, 1, px, LANES)
            where = first + py * PATCH + px
            if COLOR == 1:  # the kept channel only (acc's first pair); noise below
                v0 = _gather(image, ry, cx, COLOR == 1, PAIRED)
                acc = _sums1(acc, v0, valid, ROWS, COLS, WARPS, FULL)
                tl.store(kept_plane + (py * PATCH + px), v0, mask=valid)
            else:
                v0 = _gather(image, ry, cx, COLOR == 1, PAIRED)
                v1 = _gather(image + stride_c, ry, cx, COLOR == 1, PAIRED)
                v2 = _gather(image + 2 * stride_c, ry, cx, COLOR == 1, PAIRED)
                if COLOR == 2:
                    v0, v1, v2 = _project(v0, v1, v2)
                acc = _sums(acc, v0, v1, v2, valid, ROWS, COLS, WARPS, FULL)
                tl.store(where, v0, mask=valid)
                tl.store(where + PLANE, v1, mask=valid)
                tl.store(where + 2 * PLANE, v2, mask=valid)
        if COLOR == 1:
            noise = (_noise_plane(first, seed, n, (kept + 1) % 3, PATCH, NB),
                     _noise_plane(first, seed, n, (kept + 2) % 3, PATCH, NB))
    else:
        # Regions: the crop in `first`, the small image in `second`, the patch in `first` again (the crop is
        # no longer needed). The first two have row stride P + 1 and planes of (P + 1)^2, so that a tap's second
        # position is always the next column (row): at an edge, where the spec repeats the first position with
        # weight 0, this reads a neighbour instead, and 0 * (any finite value >= 0) adds the same +0. So the four
        # reads share one address (constant offsets), and the neighbours past each image's edge must hold
        # finite values: the crop's row and column P (zeroed here), the small image's row and column d (zeroed
        # in 2b).
        CHANNELS: tl.constexpr = 1 if COLOR == 1 else 3
        STRIDE: tl.constexpr = PATCH + 1
        SPLANE: tl.constexpr = STRIDE * STRIDE
        edge = tl.arange(0, 2 * LANES)
        for c in tl.static_range(CHANNELS):
            tl.store(first + c * SPLANE + PATCH * STRIDE + edge, 0.0, mask=edge <= PATCH)  # row P
            tl.store(first + c * SPLANE + edge * STRIDE + PATCH, 0.0, mask=edge < PATCH)  # column P
        # ---- phase 2a: the crop of the channels read from the image
        CROP_TILES: tl.constexpr = ((PATCH + CROP_ROWS - 1) // CROP_ROWS) * ((PATCH + COLS - 1) // COLS)
        for t in tl.range(0, CROP_TILES, loop_unroll_factor=1):
            py, px = _tile(t, PATCH, CROP_ROWS, COLS)
            py, px, valid = _clip(py, px, PATCH, PATCH)
            ry = _load_table(itab, 0, py, LANES)
            cx = _load_table(itab, 1, px, LANES)
            where = first + py * STRIDE + px
            for c in tl.static_range(CHANNELS):
                tl.store(where + c * SPLANE, _gather(image + c * stride_c, ry, cx, COLOR == 1, PAIRED),
                         mask=valid)
        tl.debug_barrier()
        # ---- phase 2b: down-sampled to down x down, 4 reads of the crop per value from one address; each row
        # also writes its column d as 0, and row d is zeroed first (read by 2c with weight 0; the loop writes rows
        # 0 .. d - 1 only; zeroed after it, the lane offsets stayed live across the loop: an 8-byte stack frame)
        for c in tl.static_range(CHANNELS):
            tl.store(second + c * SPLANE + down * STRIDE + edge, 0.0, mask=edge <= down)
        small_tiles_x = (down + COLS) // COLS
        small_tiles = ((down + ROWS - 1) // ROWS) * small_tiles_x
        ty = 0 * down
        tx = ty
        for t in tl.range(0, small_tiles, loop_unroll_factor=1):
            sy, sx = _tile_at(ty, tx, ROWS, COLS)
            ty, tx = _next_tile(ty, tx, small_tiles_x)
            sy, sx, valid = _clip(sy, sx, down, down + 1)
            inside = sx < down
            sx = tl.minimum(sx, down - 1)
            y0, wy0, wy1 = _load_staged_taps(wtab, 2, sy, LANES)
            x0, wx0, wx1 = _load_staged_taps(wtab, 3, sx, LANES)
            at = (y0 + x0).to(tl.int32)
            where = second + sy * STRIDE + tl.where(inside, sx, down)
            for c in tl.static_range(CHANNELS):
                src = first + c * SPLANE + at
                value = _blend(wy0, wy1, wx0, wx1, tl.load(src), tl.load(src + 1), tl.load(src + STRIDE),
                               tl.load(src + STRIDE + 1))
                tl.store(where + c * SPLANE, tl.where(inside, value, 0.0), mask=valid)
        tl.debug_barrier()
        # ---- phase 2c: up-sampled to P x P from the small image, 4 reads per value from one address (both
        # separable halves in one blend: wy0 * (wx0 * a + wx1 * b) + wy1 * (...) is exactly the horizontal half
        # of two small rows, then the vertical one), coloured, summed and staged in `first` (the crop is dead)
        kept_plane = first + kept * PLANE
        for t in tl.range(0, NUM_TILES, loop_unroll_factor=1):
            py, px = _tile(t, PATCH, ROWS, COLS)
            py, px, valid = _clip(py, px, PATCH, PATCH)
            y0, wy0, wy1 = _load_staged_taps(wtab, 4, py, LANES)
            x0, wx0, wx1 = _load_staged_taps(wtab, 5, px, LANES)
            src = second + (y0 + x0).to(tl.int32)
            where = first + py * PATCH + px
            if COLOR == 1:
                v0 = _blend(wy0, wy1, wx0, wx1, tl.load(src), tl.load(src + 1), tl.load(src + STRIDE),
                            tl.load(src + STRIDE + 1))
                acc = _sums1(acc, v0, valid, ROWS, COLS, WARPS, FULL)
                tl.store(kept_plane + (py * PATCH + px), v0, mask=valid)
            else:
                v0 = _blend(wy0, wy1, wx0, wx1, tl.load(src), tl.load(src + 1), tl.load(src + STRIDE),
                            tl.load(src + STRIDE + 1))
                v1 = _blend(wy0, wy1, wx0, wx1, tl.load(src + SPLANE), tl.load(src + SPLANE + 1),
                            tl.load(src + SPLANE + STRIDE), tl.load(src + SPLANE + STRIDE + 1))
                v2 = _blend(wy0, wy1, wx0, wx1, tl.load(src + 2 * SPLANE), tl.load(src + 2 * SPLANE + 1),
                            tl.load(src + 2 * SPLANE + STRIDE), tl.load(src + 2 * SPLANE + STRIDE + 1))
                if COLOR == 2:
                    v0, v1, v2 = _project(v0, v1, v2)
                acc = _sums(acc, v0, v1, v2, valid, ROWS, COLS, WARPS, FULL)
                tl.store(where, v0, mask=valid)
                tl.store(where + PLANE, v1, mask=valid)
                tl.store(where + 2 * PLANE, v2, mask=valid)
        if COLOR == 1:  # the noise channels beside the kept one, in `first` too
            noise = (_noise_plane(first, seed, n, (kept + 1) % 3, PATCH, NB),
                     _noise_plane(first, seed, n, (kept + 2) % 3, PATCH, NB))
    return acc, noise


@triton.jit
def extract_patches_kernel(
    data,  # uint8 flat buffer of all images
    meta,  # int64 [B, 6]: offset, rows, cols, stride_c, stride_y, stride_x
    plan,  # int32 [N, 7]: image, resized rows, resized cols, top, left, kept channel, down size
    out,  # [N, 3, P, P] in any memory format, strides below
    scratch_f,  # float32 [programs, SCRATCH_F]: the staged passes' tap tables (2-5; the slots of 0 and 1 unused),
    #            then the regions `first` and `second` (the staged patch, the crop, the small image)
    scratch_i,  # int64 [programs, SCRATCH_I]: the image tap tables (offsets, and both weights as one int64)
    plan_error,  # int32 scalar: set to 1 when a plan row was out of range (relpos/plan_guard.py reads it)
    num_images,
    num_patches,
    seed,
    out_stride_n, out_stride_c, out_stride_y, out_stride_x,
    COLOR: tl.constexpr,
    PATCH: tl.constexpr,
    DOWN: tl.constexpr,  # this specialisation renders only the patches with (down > 0) == DOWN
    ROWS: tl.constexpr,  # phases 2 work in tiles of ROWS x COLS pixels (phase 2a: CROP_ROWS x COLS)
    COLS: tl.constexpr,
    BLOCK: tl.constexpr,  # phase 3 works in blocks of BLOCK pixels
    LANES: tl.constexpr,  # entries per tap table: the next power of two >= PATCH
    WARPS: tl.constexpr,  # num_warps, which shapes the in-thread partial sums (ROWS is a multiple of it)
    NB: tl.constexpr,  # colour drop: Philox blocks (of four values) per trip of the noise loop
    HARDWARE_BF16: tl.constexpr,  # compiled for a GPU (not Triton's CPU interpreter): see _cast
    CROP_ROWS: tl.constexpr,
    PIXEL_STRIDE: tl.constexpr,  # out_stride_x where pixel p lies at p * it (see specialisation), else 0
    INTERLEAVED: tl.constexpr,  # dense channels-last output (strides 3 P^2, 1, 3 P, 3): see _store_interleaved
    PAIRED: tl.constexpr,  # the images' common pixel stride (1 or 3) where all are >= 2 pixels wide, else 0: _gather
):
    PLANE: tl.constexpr = PATCH * PATCH
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    REGION: tl.constexpr = (3 * (PATCH + 1) * (PATCH + 1) + 31) // 32 * 32  # 128-byte aligned: vector access
    wtab = scratch_f + program.to(tl.int64) * (TABLES * 2 * LANES + 2 * REGION)
    first = wtab + TABLES * 2 * LANES
    second = first + REGION
    staged = first  # where phase 2 leaves the patch (for DOWN after the crop and the small image in `second`)
    itab = scratch_i + program.to(tl.int64) * (6 * LANES)  # tables 0, 1: offsets [2, LANES], weights [LANES]
    for n in range(program, num_patches, programs):  # a fixed grid walks the plan: scratch sized by the grid
        n = n + 0 * program  # a tensor under the interpreter too, where range() yields Python ints
        row = _plan_row(plan, n, num_images, PATCH)
        if (row[6] > 0) == DOWN:  # only the crop launch raises the flag: a placeholder row is never down-sampled
            tl.atomic_or(plan_error, 1, mask=row[7])
            acc, noise = _render(data, meta, row, n, seed, itab, wtab, first, second,
                                 COLOR, PATCH, DOWN, LANES, ROWS, COLS, WARPS, NB, CROP_ROWS, PAIRED)
            s0, s1, s2, q0, q1, q2 = acc
            kept = row[5]
            if COLOR == 1:  # acc's first pair is the kept channel's (only it is centred); the noise: squares only
                sk = tl.sum(tl.sum(s0, axis=1), axis=0)
                qk = tl.sum(tl.sum(q0, axis=1), axis=0)
                qa = tl.sum(noise[0], axis=0)  # channel (kept + 1) % 3
                qb = tl.sum(noise[1], axis=0)  # channel (kept + 2) % 3
                mk = sk / PLANE  # one division, not three (the others were 0 / P^2)
                tk = qk - sk * mk
                total = (tl.where(kept == 0, tk, tl.where(kept == 2, qa, qb))
                         + tl.where(kept == 1, tk, tl.where(kept == 0, qa, qb))
                         + tl.where(kept == 2, tk, tl.where(kept == 1, qa, qb)))  # channel order, as the C++ op
                mean0 = tl.where(kept == 0, mk, 0.0).to(tl.float32)
                mean1 = tl.where(kept == 1, mk, 0.0).to(tl.float32)
                mean2 = tl.where(kept == 2, mk, 0.0).to(tl.float32)
            else:
                s0 = tl.sum(tl.sum(s0, axis=1), axis=0)
                s1 = tl.sum(tl.sum(s1, axis=1), axis=0)
                s2 = tl.sum(tl.sum(s2, axis=1), axis=0)
                q0 = tl.sum(tl.sum(q0, axis=1), axis=0)
                q1 = tl.sum(tl.sum(q1, axis=1), axis=0)
                q2 = tl.sum(tl.sum(q2, axis=1), axis=0)
                m0 = s0 / PLANE
                m1 = s1 / PLANE
                m2 = s2 / PLANE
                total = (q0 - s0 * m0) + (q1 - s1 * m1) + (q2 - s2 * m2)
                mean0 = m0.to(tl.float32)
                mean1 = m1.to(tl.float32)
                mean2 = m2.to(tl.float32)
            scale = (50.0 / tl.sqrt(total / (3 * PLANE) + 1e-8)).to(tl.float32)
            tl.debug_barrier()
            # ---- phase 3: normalise the staged patch into the output
            base = out + n.to(tl.int64) * out_stride_n
            if INTERLEAVED:  # RUN consecutive pixels per row of [BLOCK // RUN, RUN]: their values are contiguous
                RUN: tl.constexpr = 4 if out.dtype.element_ty.primitive_bitwidth == 32 else 8
                EXACT: tl.constexpr = PLANE % BLOCK == 0
                for start in tl.range(0, PLANE, BLOCK, loop_unroll_factor=1):
                    row_pixel = start + RUN * tl.arange(0, BLOCK // RUN)[:, None]
                    pix = row_pixel + tl.arange(0, RUN)[None, :]
                    valid = pix < PLANE
                    v0 = tl.load(staged + pix, mask=valid)
                    v1 = tl.load(staged + PLANE + pix, mask=valid)
                    v2 = tl.load(staged + 2 * PLANE + pix, mask=valid)
                    _store_interleaved(base, row_pixel, (v0 - mean0) * scale, (v1 - mean1) * scale,
                                       (v2 - mean2) * scale, PLANE, RUN, out.dtype.element_ty, HARDWARE_BF16, EXACT)
            for start in tl.range(0, 0 if INTERLEAVED else PLANE, BLOCK, loop_unroll_factor=1):
                pix = start + tl.arange(0, BLOCK)
                valid = pix < PLANE
                if PIXEL_STRIDE > 0:  # rows follow each other: no division per pixel
                    where = base + pix * PIXEL_STRIDE
                else:
                    y = pix // PATCH
                    where = base + y * out_stride_y + (pix - y * PATCH) * out_stride_x
                v0 = tl.load(staged + pix, mask=valid)
                v1 = tl.load(staged + PLANE + pix, mask=valid)
                v2 = tl.load(staged + 2 * PLANE + pix, mask=valid)
                dtype: tl.constexpr = out.dtype.element_ty
                tl.store(where, _cast((v0 - mean0) * scale, dtype, HARDWARE_BF16), mask=valid)
                tl.store(where + out_stride_c, _cast((v1 - mean1) * scale, dtype, HARDWARE_BF16), mask=valid)
                tl.store(where + 2 * out_stride_c, _cast((v2 - mean2) * scale, dtype, HARDWARE_BF16), mask=valid)
            tl.debug_barrier()  # the next patch overwrites the scratch


# Tile shape, normalise block, warps and register cap per path, chosen with benchmarks/gpu_static.py (sm_80/90).
# One warp holds rows w, w + 4, ... of a tile. A tile of 8 x 32 (two pixels per thread) fits 64 registers with no
# spills (50% theoretical occupancy); 16 x 32 takes ~6% fewer instructions per element but 72-90 registers
# (31-44%), and spills under a cap of 64. Colour drop gathers one channel: its crop path takes 32 x 32 (eight
# rows per thread share one column's taps and the tile's set-up: ~3% fewer instructions per element than 16 x 32,
# no spills on sm_80/90); its down path works in 32 x 32 tiles too (~1% fewer instructions per element than 16 x 32),
# except in channels-last, where 32-row tiles spill or take an 8-16 byte stack frame on sm_90 (see specialisation),
# and in its crop phase (2a), whose 32-row tiles spill 40 bytes with PAIRED reads (16 rows: none).
# Normalise blocks of 1024 pixels: with 512 LLVM unrolls the NCHW loop 3 times (gpu_static would overcount it).
TILES = {  # (DOWN, colour drop) -> (ROWS, COLS, BLOCK, num_warps, maxnreg, CROP_ROWS)
    (False, False): (8, 32, 1024, 4, 64, 8), (False, True): (32, 32, 1024, 4, 64, 32),
    (True, False): (8, 32, 1024, 4, 64, 8), (True, True): (32, 32, 1024, 4, 64, 16),
}
MAX_SIDE = tl.constexpr(32767)  # relpos.images.MAX_SIDE: keeps the tap arithmetic inside int32 (tested equal)
NOISE_BLOCKS = 256  # Philox evaluations per trip of the noise loop (colour drop)
PROGRAMS_PER_SM = 8  # the grid on a GPU: enough resident programs per SM to hide latency
INTERPRETER_PROGRAMS = 4  # the grid in Triton's CPU interpreter (programs run one after another there)


def scratch_sizes(patch: int) -> tuple[int, int]:
    """float32 and int64 scratch elements per program."""
    lanes = triton.next_power_of_2(patch)
    region = (3 * (patch + 1) ** 2 + 31) // 32 * 32
    return TABLES.value * 2 * lanes + 2 * region, 6 * lanes


def specialisation(color: int, patch: int, out_strides, down: bool, on_gpu: bool = True, paired: int = 3) -> dict:
    """The non-tensor arguments `launch` passes for one specialisation (also what benchmarks/gpu_static.py
    compiles ahead of time; paired: see paired_columns, 3 for decoded H x W x 3 images)."""
    stride_n, stride_c, stride_y, stride_x = out_strides
    rows, cols, block, num_warps, maxnreg, crop_rows = TILES[down, color == COLOR_DROP]
    cols = min(cols, triton.next_power_of_2(patch))
    warps = min(num_warps, rows)
    rows = max(warps, min(rows, triton.next_power_of_2(patch)))
    crop_rows = max(warps, min(crop_rows, triton.next_power_of_2(patch)))
    if down and stride_c == 1:  # channels-last down path: 32-row tiles spill or take a stack frame on sm_90
        crop_rows = min(crop_rows, 16)
        rows = min(rows, 16)
    block = min(block, triton.next_power_of_2(patch * patch))
    nb = min(NOISE_BLOCKS, triton.next_power_of_2(-(-patch * patch // 4)))
    # pixel p at p * stride_x when rows follow each other: no division per pixel (ptxas then unrolls the NCHW
    # normalise loop whole, which colour drop's NCHW down path cannot afford: it spills 40 bytes in float32 on
    # sm_90, 72 in bfloat16 on sm_80; the other colours' down paths gain 0.4-0.9 per element on the mix)
    unrolled_spills = down and stride_x == 1 and color == COLOR_DROP
    pixel_stride = stride_x if stride_y == patch * stride_x and not unrolled_spills else 0
    interleaved = (stride_c, stride_y, stride_x) == (1, 3 * patch, 3) and block >= 8
    return {"num_images": 7, "num_patches": 4096, "seed": 0, "out_stride_n": stride_n, "out_stride_c": stride_c,
            "out_stride_y": stride_y, "out_stride_x": stride_x, "COLOR": color, "PATCH": patch, "DOWN": down,
            "ROWS": rows, "COLS": cols, "BLOCK": block, "LANES": triton.next_power_of_2(patch), "WARPS": warps,
            "NB": nb, "HARDWARE_BF16": on_gpu, "CROP_ROWS": crop_rows, "PIXEL_STRIDE": pixel_stride,
            "INTERLEAVED": interleaved, "PAIRED": paired,
            "__constexpr__": ("COLOR", "PATCH", "DOWN", "ROWS", "COLS", "BLOCK", "LANES", "WARPS", "NB",
                              "HARDWARE_BF16", "CROP_ROWS", "PIXEL_STRIDE", "INTERLEAVED", "PAIRED"),
            "__num_warps__": num_warps, "__maxnreg__": maxnreg}


def loop_trips(spec: dict, down: int) -> list[int]:
    """Trip counts of the kernel's per-patch loops in program order, for a patch of down size `down` (0: crop):
    what benchmarks/gpu_static.py weights the SASS of each loop body by."""
    patch, rows, cols = spec["PATCH"], spec["ROWS"], spec["COLS"]
    tiles = -(-patch // rows) * -(-patch // cols)
    normalise = -(-patch * patch // spec["BLOCK"])
    noise = []
    if spec["COLOR"] == COLOR_DROP:  # two noise channels, each its own loop
        plane = patch * patch
        noise = [-(-(plane // 4 + (0 if plane % 4 == 0 else 2)) // spec["NB"])] * 2
    if not spec["DOWN"]:
        return [tiles, *noise, normalise]
    crop_tiles = -(-patch // spec["CROP_ROWS"]) * -(-patch // cols)  # phase 2a
    return [crop_tiles, -(-down // rows) * -(-(down + 1) // cols), tiles, *noise, normalise]


def scratch_bytes(spec: dict, down: int) -> int:
    """Bytes of per-program scratch one patch of down size `down` (0: crop) writes and reads back (each value
    once; the tap tables, ~3 KB, left out): L1/L2 traffic while the programs' regions fit there, HBM traffic where
    they do not (benchmarks/gpu_static.py reports the roofline both ways)."""
    patch, channels = spec["PATCH"], 1 if spec["COLOR"] == COLOR_DROP else 3
    staged = 3 * patch * patch  # the patch before normalisation
    if not spec["DOWN"]:
        return 2 * 4 * staged
    crop, small = channels * patch * patch, channels * down * down
    return 2 * 4 * (crop + small + staged)


SPLITS_DOWN = True  # crop and down-sampled patches are separate specialisations


def grid_size(num_patches: int, device) -> int:
    """Programs to launch: on a GPU a fixed number per SM (each walks the plan), on the CPU interpreter a few."""
    import torch
    if device.type == "cuda":
        cap = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        cap = INTERPRETER_PROGRAMS
    return max(1, min(num_patches, cap))


def paired_columns(meta) -> int:
    """PAIRED for an image table (int64 [B, 6]: offset, rows, cols, stride_c, stride_y, stride_x): the images'
    common pixel stride where it is 1 (3 x H x W) or 3 (H x W x 3) and every image is at least 2 pixels wide, so
    that a tap's second column is always the first plus one pixel (_store_table, _gather); else 0 (both columns
    from the tap table). Only a table on the CPU is read (0 otherwise): no device sync."""
    if meta.device.type != "cpu" or meta.shape[0] == 0:
        return 0
    strides = meta[:, 5]
    stride = int(strides[0])
    if stride in (1, 3) and bool((strides == stride).all()) and bool((meta[:, 2] >= 2).all()):
        return stride
    return 0


def launch(data, meta, plan, out, seed: int, color: int, patch: int, plan_error, paired: int | None = None) -> None:
    """Launch on tensors already checked and on one device (`out` preallocated, any memory format). paired:
    paired_columns of the image table (computed from `meta` when not given).

    Two launches over the whole plan, one per specialisation; each program skips the patches of the other kind.
    That needs no host sync to partition the plan. The scratch buffer is sized from the plan's shape alone."""
    import torch
    num_patches = plan.shape[0]
    if num_patches == 0:
        return
    if paired is None:
        paired = paired_columns(meta)
    programs = grid_size(num_patches, out.device)
    size_f, size_i = scratch_sizes(patch)
    scratch_f = torch.empty((programs, size_f), dtype=torch.float32, device=out.device)
    scratch_i = torch.empty((programs, size_i), dtype=torch.int64, device=out.device)
    for down in (False, True):
        spec = specialisation(color, patch, out.stride(), down, on_gpu=out.device.type == "cuda", paired=paired)
        extract_patches_kernel[(programs,)](
            data, meta, plan, out, scratch_f, scratch_i, plan_error, meta.shape[0], num_patches, seed, *out.stride(),
            COLOR=color,
            PATCH=patch, DOWN=down, ROWS=spec["ROWS"], COLS=spec["COLS"], BLOCK=spec["BLOCK"],
            LANES=spec["LANES"], WARPS=spec["WARPS"], NB=spec["NB"], HARDWARE_BF16=spec["HARDWARE_BF16"],
            CROP_ROWS=spec["CROP_ROWS"], PIXEL_STRIDE=spec["PIXEL_STRIDE"], INTERLEAVED=spec["INTERLEAVED"],
            PAIRED=spec["PAIRED"],
            num_warps=spec["__num_warps__"], maxnreg=spec["__maxnreg__"],
            enable_fp_fusion=False,  # no FMA contraction: the same rounding as the C++ and reference backends
        )
