"""Triton kernel of the fused pixel op: one program renders one patch straight from the ragged uint8 images.

Crop and down-sampled patches are separate specialisations (DOWN), each with its own tile size, so the
64-tap down/up path does not set the register budget of the 4-tap crop path. The patch is rendered in 2D tiles
so that bilinear tap tables are computed per row and per column, once for all three channels. Pass 1 computes the patch's channel sums (float64, so the result does not depend on the reduction order);
pass 2 recomputes each pixel and writes it normalised. Recomputing is cheaper than a round trip through
memory: the gathers hit L1/L2, and the only HBM traffic is the images read once and the patches written
once. The math follows csrc/relpos_math.h step for step (see relpos/reference.py for the spec).

This file knows nothing of torch.library; relpos/triton_op.py registers the launch as a torch op.
"""

import triton
import triton.language as tl

COLOR_NONE, COLOR_DROP, COLOR_PROJECT = 0, 1, 2


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
def _crop_axis(p, top, size, resized, stride):
    """Source offsets and weights of crop row/column p at `top` of the virtually resized axis."""
    i0, i1, w0, w1 = _taps(top + p, size, resized)
    return i0 * stride, i1 * stride, w0, w1


@triton.jit
def _small_axis(s, top, size, resized, stride, down, PATCH: tl.constexpr):
    """Row/column s of the crop downsampled to `down`: the two crop positions it blends, with their taps."""
    b0, b1, wb0, wb1 = _taps(s, PATCH, down)
    c00, c01, wc00, wc01 = _crop_axis(b0, top, size, resized, stride)
    c10, c11, wc10, wc11 = _crop_axis(b1, top, size, resized, stride)
    return wb0, wb1, c00, c01, wc00, wc01, c10, c11, wc10, wc11


@triton.jit
def _crop_value(image, y0, y1, wy0, wy1, x0, x1, wx0, wx1):
    """A bilinear source read; row taps are [R, 1], column taps [1, C], the value [R, C]."""
    v00 = tl.load(image + y0 + x0).to(tl.float32)
    v01 = tl.load(image + y0 + x1).to(tl.float32)
    v10 = tl.load(image + y1 + x0).to(tl.float32)
    v11 = tl.load(image + y1 + x1).to(tl.float32)
    return _blend(wy0, wy1, wx0, wx1, v00, v01, v10, v11)


@triton.jit
def _small_value(image, ywb0, ywb1, yc00, yc01, ywc00, ywc01, yc10, yc11, ywc10, ywc11,
                 xwb0, xwb1, xc00, xc01, xwc00, xwc01, xc10, xc11, xwc10, xwc11):
    """A pixel of the downsampled crop, from its _small_axis taps."""
    v00 = _crop_value(image, yc00, yc01, ywc00, ywc01, xc00, xc01, xwc00, xwc01)
    v01 = _crop_value(image, yc00, yc01, ywc00, ywc01, xc10, xc11, xwc10, xwc11)
    v10 = _crop_value(image, yc10, yc11, ywc10, ywc11, xc00, xc01, xwc00, xwc01)
    v11 = _crop_value(image, yc10, yc11, ywc10, ywc11, xc10, xc11, xwc10, xwc11)
    return _blend(ywb0, ywb1, xwb0, xwb1, v00, v01, v10, v11)


@triton.jit
def _channel(image, py, px, top, left, rows, cols, resized_rows, resized_cols, stride_y, stride_x, down,
             PATCH: tl.constexpr, DOWN: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """One channel of a [R, C] tile (rows py [R, 1], columns px [1, C]) before colour handling: the crop, or
    (DOWN) the crop down- and up-sampled again. Tap tables are per row and per column, not per pixel."""
    if DOWN:
        # value = way0 * h0 + way1 * h1 with h_i = wax0 * small(ay_i, ax0) + wax1 * small(ay_i, ax1), the blend
        # order of _blend. A loop that is not unrolled over i keeps half of the 64 gathers and row taps live at a
        # time; unrolled, the compiler hoists them all and spills.
        ay0, ay1, way0, way1 = _taps(py, down, PATCH)
        ax0, ax1, wax0, wax1 = _taps(px, down, PATCH)
        x0 = _small_axis(ax0, left, cols, resized_cols, stride_x, down, PATCH)
        x1 = _small_axis(ax1, left, cols, resized_cols, stride_x, down, PATCH)
        h0 = tl.zeros([ROWS, COLS], tl.float32)
        h1 = tl.zeros([ROWS, COLS], tl.float32)
        for i in tl.range(0, 2, loop_unroll_factor=1):
            y = _small_axis(tl.where(i == 0, ay0, ay1), top, rows, resized_rows, stride_y, down, PATCH)
            h1 = wax0 * _small_value(image, *y, *x0) + wax1 * _small_value(image, *y, *x1)
            h0 = tl.where(i == 0, h1, h0)
        value = way0 * h0 + way1 * h1
    else:
        y0, y1, wy0, wy1 = _crop_axis(py, top, rows, resized_rows, stride_y)
        x0, x1, wx0, wx1 = _crop_axis(px, left, cols, resized_cols, stride_x)
        value = _crop_value(image, y0, y1, wy0, wy1, x0, x1, wx0, wx1)
    return value


@triton.jit
def _noise(seed, patch_index, element):
    """Uniform noise in [-0.5, 0.5): word (element % 4) of Philox4x32-10 at counter (element // 4, patch),
    top 24 bits."""
    w0, w1, w2, w3 = tl.randint4x(seed, (patch_index.to(tl.int64) << 32) | (element >> 2).to(tl.int64))
    k = element & 3
    word = tl.where(k == 0, w0, tl.where(k == 1, w1, tl.where(k == 2, w2, w3)))
    return (word >> 8).to(tl.float32) * (1.0 / 16777216.0) - 0.5


@triton.jit
def _cast(value, dtype: tl.constexpr):
    """float32 -> output dtype, rounding to nearest even. bfloat16 is rounded by hand: Triton's CPU
    interpreter truncates float32 -> bfloat16 whatever rounding is asked for; after this the cast is exact."""
    if dtype == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        value = bits.to(tl.float32, bitcast=True)
    return value.to(dtype, fp_downcast_rounding="rtne")


@triton.jit
def _pixels(data, meta, plan, n, seed, py, px, COLOR: tl.constexpr, PATCH: tl.constexpr, DOWN: tl.constexpr,
            ROWS: tl.constexpr, COLS: tl.constexpr):
    """The three channels of the [R, C] tile at rows py [R, 1], columns px [1, C] of patch n, before
    normalisation."""
    row = plan + n * 7
    image_index = tl.load(row + 0).to(tl.int64)
    resized_rows = tl.load(row + 1)
    resized_cols = tl.load(row + 2)
    top = tl.load(row + 3)
    left = tl.load(row + 4)
    kept = tl.load(row + 5)
    down = tl.load(row + 6)
    m = meta + image_index * 6
    rows = tl.load(m + 1).to(tl.int32)
    cols = tl.load(m + 2).to(tl.int32)
    stride_c = tl.load(m + 3)
    stride_y = tl.load(m + 4)
    stride_x = tl.load(m + 5)
    base = data + tl.load(m + 0)
    geometry = (top, left, rows, cols, resized_rows, resized_cols, stride_y, stride_x, down)
    if COLOR == 1:  # drop: only the kept channel is read from the image
        value = _channel(base + kept.to(tl.int64) * stride_c, py, px, *geometry, PATCH, DOWN, ROWS, COLS)
        pix = py * PATCH + px
        v0 = tl.where(kept == 0, value, _noise(seed, n, pix))
        v1 = tl.where(kept == 1, value, _noise(seed, n, pix + PATCH * PATCH))
        v2 = tl.where(kept == 2, value, _noise(seed, n, pix + 2 * PATCH * PATCH))
    else:
        v0 = _channel(base, py, px, *geometry, PATCH, DOWN, ROWS, COLS)
        v1 = _channel(base + stride_c, py, px, *geometry, PATCH, DOWN, ROWS, COLS)
        v2 = _channel(base + 2 * stride_c, py, px, *geometry, PATCH, DOWN, ROWS, COLS)
        if COLOR == 2:  # project out the green-magenta axis
            d = tl.math.div_rn(2.0 * v1 - v0 - v2, tl.full(v1.shape, 6.0, tl.float32))
            v0 = v0 + d
            v1 = v1 - 2.0 * d
            v2 = v2 + d
    return v0, v1, v2


@triton.jit
def extract_patches_kernel(
    data,  # uint8 flat buffer of all images
    meta,  # int64 [B, 6]: offset, rows, cols, stride_c, stride_y, stride_x
    plan,  # int32 [N, 7]: image, resized rows, resized cols, top, left, kept channel, down size
    out,  # [N, 3, P, P] in any memory format, strides below
    seed,
    out_stride_n, out_stride_c, out_stride_y, out_stride_x,
    COLOR: tl.constexpr,
    PATCH: tl.constexpr,
    DOWN: tl.constexpr,  # this specialisation renders only the patches with (down > 0) == DOWN
    ROWS: tl.constexpr,  # the patch is rendered in tiles of ROWS x COLS pixels
    COLS: tl.constexpr,
):
    n = tl.program_id(0)
    if (tl.load(plan + n * 7 + 6) > 0) == DOWN:
        PIXELS: tl.constexpr = PATCH * PATCH
        lane_y = tl.arange(0, ROWS)[:, None]
        lane_x = tl.arange(0, COLS)[None, :]
        sum0 = tl.zeros([ROWS, COLS], tl.float64)
        sum1 = tl.zeros([ROWS, COLS], tl.float64)
        sum2 = tl.zeros([ROWS, COLS], tl.float64)
        sq0 = tl.zeros([ROWS, COLS], tl.float64)
        sq1 = tl.zeros([ROWS, COLS], tl.float64)
        sq2 = tl.zeros([ROWS, COLS], tl.float64)
        for y_start in range(0, PATCH, ROWS):
            for x_start in range(0, PATCH, COLS):
                py = y_start + lane_y
                px = x_start + lane_x
                valid = (py < PATCH) & (px < PATCH)
                py = tl.minimum(py, PATCH - 1)  # keep every address in range; invalid lanes are masked below
                px = tl.minimum(px, PATCH - 1)
                v0, v1, v2 = _pixels(data, meta, plan, n, seed, py, px, COLOR, PATCH, DOWN, ROWS, COLS)
                d0 = tl.where(valid, v0.to(tl.float64), 0.0)
                d1 = tl.where(valid, v1.to(tl.float64), 0.0)
                d2 = tl.where(valid, v2.to(tl.float64), 0.0)
                sum0 += d0
                sum1 += d1
                sum2 += d2
                sq0 += d0 * d0
                sq1 += d1 * d1
                sq2 += d2 * d2
        s0 = tl.sum(tl.sum(sum0, axis=1), axis=0)
        s1 = tl.sum(tl.sum(sum1, axis=1), axis=0)
        s2 = tl.sum(tl.sum(sum2, axis=1), axis=0)
        q0 = tl.sum(tl.sum(sq0, axis=1), axis=0)
        q1 = tl.sum(tl.sum(sq1, axis=1), axis=0)
        q2 = tl.sum(tl.sum(sq2, axis=1), axis=0)
        kept = tl.load(plan + n * 7 + 5)
        # Channels that carry image content are centred; noise channels (colour drop) are left as they are.
        keep0 = (COLOR != 1) | (kept == 0)
        keep1 = (COLOR != 1) | (kept == 1)
        keep2 = (COLOR != 1) | (kept == 2)
        m0 = s0 / PIXELS
        m1 = s1 / PIXELS
        m2 = s2 / PIXELS
        total = (tl.where(keep0, q0 - s0 * m0, q0) + tl.where(keep1, q1 - s1 * m1, q1)
                 + tl.where(keep2, q2 - s2 * m2, q2))
        scale = (50.0 / tl.sqrt(total / (3 * PIXELS) + 1e-8)).to(tl.float32)
        mean0 = tl.where(keep0, m0, 0.0).to(tl.float32)
        mean1 = tl.where(keep1, m1, 0.0).to(tl.float32)
        mean2 = tl.where(keep2, m2, 0.0).to(tl.float32)
        base = out + n.to(tl.int64) * out_stride_n
        for y_start in range(0, PATCH, ROWS):
            for x_start in range(0, PATCH, COLS):
                py = y_start + lane_y
                px = x_start + lane_x
                valid = (py < PATCH) & (px < PATCH)
                py = tl.minimum(py, PATCH - 1)
                px = tl.minimum(px, PATCH - 1)
                v0, v1, v2 = _pixels(data, meta, plan, n, seed, py, px, COLOR, PATCH, DOWN, ROWS, COLS)
                where = base + py * out_stride_y + px * out_stride_x
                tl.store(where, _cast((v0 - mean0) * scale, out.dtype.element_ty), mask=valid)
                tl.store(where + out_stride_c, _cast((v1 - mean1) * scale, out.dtype.element_ty), mask=valid)
                tl.store(where + 2 * out_stride_c, _cast((v2 - mean2) * scale, out.dtype.element_ty), mask=valid)


# Tile shape, warps and register cap per path, chosen with benchmarks/gpu_static.py (sm_80/90): one pixel per
# thread; the crop path fits 64 registers without spilling (50% theoretical occupancy), the down path (64
# gathers per channel) needs ~100 uncapped (25-31%) and spills under a cap of 80. With 8 warps ptxas capped
# the down path at 128 registers on sm_80 and colour drop spilled; 4 warps lift that cap.
# Colour drop's crop path (Philox noise) spills 16 B at 64 on sm_80, so it gets 72 (43.75%).
TILES = {  # (DOWN, colour drop) -> (ROWS, COLS, num_warps, maxnreg)
    (False, False): (4, 32, 4, 64), (False, True): (4, 32, 4, 72),
    (True, False): (4, 32, 4, None), (True, True): (4, 32, 4, None),
}


def specialisation(color: int, patch: int, out_strides, down: bool) -> dict:
    """The non-tensor arguments `launch` passes for one specialisation (also what benchmarks/gpu_static.py
    compiles ahead of time)."""
    stride_n, stride_c, stride_y, stride_x = out_strides
    rows, cols, num_warps, maxnreg = TILES[down, color == COLOR_DROP]
    cols = min(cols, triton.next_power_of_2(patch))
    rows = min(rows, triton.next_power_of_2(patch))
    return {"seed": 0, "out_stride_n": stride_n, "out_stride_c": stride_c, "out_stride_y": stride_y,
            "out_stride_x": stride_x, "COLOR": color, "PATCH": patch, "DOWN": down, "ROWS": rows, "COLS": cols,
            "__constexpr__": ("COLOR", "PATCH", "DOWN", "ROWS", "COLS"), "__num_warps__": num_warps,
            "__maxnreg__": maxnreg}


SPLITS_DOWN = True  # crop and down-sampled patches are separate specialisations


def launch(data, meta, plan, out, seed: int, color: int, patch: int) -> None:
    """Launch on tensors already checked and on one device (`out` preallocated, any memory format).

    Two launches over the whole plan, one per specialisation; each program returns at once for a patch of the
    other kind. That costs N empty programs but needs no host sync to partition the plan."""
    num_patches = plan.shape[0]
    if num_patches == 0:
        return
    for down in (False, True):
        spec = specialisation(color, patch, out.stride(), down)
        extract_patches_kernel[(num_patches,)](
            data, meta, plan, out, seed, *out.stride(), COLOR=color, PATCH=patch, DOWN=down, ROWS=spec["ROWS"],
            COLS=spec["COLS"], num_warps=spec["__num_warps__"], maxnreg=spec["__maxnreg__"],
            enable_fp_fusion=False,  # no FMA contraction: the same rounding as the C++ and reference backends
        )
