"""Triton kernel of the fused pixel op: one program renders one patch straight from the ragged uint8 images.

Pass 1 computes the patch's channel sums (float64, so the result does not depend on the reduction order);
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
def _crop(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, py, px):
    """Pixel (py, px) of the crop at (top, left) of the virtually resized image: a bilinear source read."""
    y0, y1, wy0, wy1 = _taps(top + py, rows, resized_rows)
    x0, x1, wx0, wx1 = _taps(left + px, cols, resized_cols)
    v00 = tl.load(image + y0 * stride_y + x0 * stride_x).to(tl.float32)
    v01 = tl.load(image + y0 * stride_y + x1 * stride_x).to(tl.float32)
    v10 = tl.load(image + y1 * stride_y + x0 * stride_x).to(tl.float32)
    v11 = tl.load(image + y1 * stride_y + x1 * stride_x).to(tl.float32)
    return _blend(wy0, wy1, wx0, wx1, v00, v01, v10, v11)


@triton.jit
def _small(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, sy, sx, down,
           PATCH: tl.constexpr):
    """Pixel (sy, sx) of the crop downsampled to down x down."""
    y0, y1, wy0, wy1 = _taps(sy, PATCH, down)
    x0, x1, wx0, wx1 = _taps(sx, PATCH, down)
    v00 = _crop(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y0, x0)
    v01 = _crop(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y0, x1)
    v10 = _crop(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y1, x0)
    v11 = _crop(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y1, x1)
    return _blend(wy0, wy1, wx0, wx1, v00, v01, v10, v11)


@triton.jit
def _channel(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, down, py, px, PATCH: tl.constexpr):
    """One channel of the patch before colour handling: the crop, or the crop down- and up-sampled again."""
    if down > 0:
        y0, y1, wy0, wy1 = _taps(py, down, PATCH)
        x0, x1, wx0, wx1 = _taps(px, down, PATCH)
        v00 = _small(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y0, x0, down, PATCH)
        v01 = _small(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y0, x1, down, PATCH)
        v10 = _small(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y1, x0, down, PATCH)
        v11 = _small(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, y1, x1, down, PATCH)
        value = _blend(wy0, wy1, wx0, wx1, v00, v01, v10, v11)
    else:
        value = _crop(image, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, py, px)
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
def _pixels(data, meta, plan, n, seed, pix, COLOR: tl.constexpr, PATCH: tl.constexpr):
    """The three channels of pixels `pix` (flat indices into the patch) of patch n, before normalisation."""
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
    py = pix // PATCH
    px = pix % PATCH
    if COLOR == 1:  # drop: only the kept channel is read from the image
        value = _channel(base + kept.to(tl.int64) * stride_c, stride_y, stride_x, rows, cols, resized_rows, resized_cols,
                         top, left, down, py, px, PATCH)
        v0 = tl.where(kept == 0, value, _noise(seed, n, pix))
        v1 = tl.where(kept == 1, value, _noise(seed, n, pix + PATCH * PATCH))
        v2 = tl.where(kept == 2, value, _noise(seed, n, pix + 2 * PATCH * PATCH))
    else:
        v0 = _channel(base, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, down, py, px, PATCH)
        v1 = _channel(base + stride_c, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, down, py, px,
                      PATCH)
        v2 = _channel(base + 2 * stride_c, stride_y, stride_x, rows, cols, resized_rows, resized_cols, top, left, down, py, px,
                      PATCH)
        if COLOR == 2:  # project out the green-magenta axis
            d = tl.math.div_rn(2.0 * v1 - v0 - v2, tl.full(v1.shape, 6.0, tl.float32))
            v0 = v0 + d
            v1 = v1 - 2.0 * d
            v2 = v2 + d
    return v0, v1, v2, kept


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
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0)
    PIXELS: tl.constexpr = PATCH * PATCH
    lanes = tl.arange(0, BLOCK)
    sum0 = tl.zeros([BLOCK], tl.float64)
    sum1 = tl.zeros([BLOCK], tl.float64)
    sum2 = tl.zeros([BLOCK], tl.float64)
    sq0 = tl.zeros([BLOCK], tl.float64)
    sq1 = tl.zeros([BLOCK], tl.float64)
    sq2 = tl.zeros([BLOCK], tl.float64)
    for start in range(0, PIXELS, BLOCK):
        pix = start + lanes
        valid = pix < PIXELS
        pix = tl.minimum(pix, PIXELS - 1)  # keep every address in range; invalid lanes are masked below
        v0, v1, v2, kept = _pixels(data, meta, plan, n, seed, pix, COLOR, PATCH)
        d0 = tl.where(valid, v0.to(tl.float64), 0.0)
        d1 = tl.where(valid, v1.to(tl.float64), 0.0)
        d2 = tl.where(valid, v2.to(tl.float64), 0.0)
        sum0 += d0
        sum1 += d1
        sum2 += d2
        sq0 += d0 * d0
        sq1 += d1 * d1
        sq2 += d2 * d2
    s0 = tl.sum(sum0, axis=0)
    s1 = tl.sum(sum1, axis=0)
    s2 = tl.sum(sum2, axis=0)
    q0 = tl.sum(sq0, axis=0)
    q1 = tl.sum(sq1, axis=0)
    q2 = tl.sum(sq2, axis=0)
    kept = tl.load(plan + n * 7 + 5)
    # Channels that carry image content are centred; noise channels (colour drop) are left as they are.
    keep0 = (COLOR != 1) | (kept == 0)
    keep1 = (COLOR != 1) | (kept == 1)
    keep2 = (COLOR != 1) | (kept == 2)
    m0 = s0 / PIXELS
    m1 = s1 / PIXELS
    m2 = s2 / PIXELS
    total = tl.where(keep0, q0 - s0 * m0, q0) + tl.where(keep1, q1 - s1 * m1, q1) + tl.where(keep2, q2 - s2 * m2, q2)
    scale = (50.0 / tl.sqrt(total / (3 * PIXELS) + 1e-8)).to(tl.float32)
    mean0 = tl.where(keep0, m0, 0.0).to(tl.float32)
    mean1 = tl.where(keep1, m1, 0.0).to(tl.float32)
    mean2 = tl.where(keep2, m2, 0.0).to(tl.float32)
    base = out + n.to(tl.int64) * out_stride_n
    for start in range(0, PIXELS, BLOCK):
        pix = start + lanes
        valid = pix < PIXELS
        pix = tl.minimum(pix, PIXELS - 1)
        v0, v1, v2, kept = _pixels(data, meta, plan, n, seed, pix, COLOR, PATCH)
        where = base + (pix // PATCH) * out_stride_y + (pix % PATCH) * out_stride_x
        tl.store(where, _cast((v0 - mean0) * scale, out.dtype.element_ty), mask=valid)
        tl.store(where + out_stride_c, _cast((v1 - mean1) * scale, out.dtype.element_ty), mask=valid)
        tl.store(where + 2 * out_stride_c, _cast((v2 - mean2) * scale, out.dtype.element_ty), mask=valid)


def specialisation(color: int, patch: int, out_strides, down=None, block: int = 1024, num_warps: int = 8) -> dict:
    """The non-tensor arguments `launch` passes for one specialisation (also what benchmarks/gpu_static.py compiles
    ahead of time). `down` is unused: this kernel renders crop and down-sampled patches in one specialisation."""
    stride_n, stride_c, stride_y, stride_x = out_strides
    return {"seed": 0, "out_stride_n": stride_n, "out_stride_c": stride_c, "out_stride_y": stride_y,
            "out_stride_x": stride_x, "COLOR": color, "PATCH": patch,
            "BLOCK": min(block, triton.next_power_of_2(patch * patch)),
            "__constexpr__": ("COLOR", "PATCH", "BLOCK"), "__num_warps__": num_warps}


def launch(data, meta, plan, out, seed: int, color: int, patch: int, block: int = 1024, num_warps: int = 8) -> None:
    """Launch on tensors already checked and on one device (`out` preallocated, any memory format)."""
    num_patches = plan.shape[0]
    if num_patches == 0:
        return
    spec = specialisation(color, patch, out.stride(), block=block, num_warps=num_warps)
    extract_patches_kernel[(num_patches,)](
        data, meta, plan, out, seed, *out.stride(), COLOR=color, PATCH=patch, BLOCK=spec["BLOCK"],
        num_warps=spec["__num_warps__"],
        enable_fp_fusion=False,  # no FMA contraction: the same rounding as the C++ and reference backends
    )
