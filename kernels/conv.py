"""Convolution as im2col + GEMM, one image at a time, in the layout the GEMM wants.

Shapes: x[N, C, H, W] (images), Wm[FN, K] (the filters W[FN, C, FH, FW] as rows,
K = C*FH*FW), col[N, K, P] (each image's patches, P = OH*OW output positions, the row
index k = (c*FH + i)*FW + j, the column p = oy*OW + ox), out[N, FN, P] (the NCHW output).
Per image, out[n] = Wm @ col[n] is one GEMM whose result is already in NCHW order: no
transposes or copies. Padding is implicit (zeros); x may be any real dtype, read and
converted element by element, while col, Wm and out share the compute dtype (float32 or
float64) and are C-contiguous.

``conv_forward_images`` / ``conv_backward_images`` compute a contiguous block of images
[lo, hi); ``forward``/``backward`` run one block per Numba thread as ``blas.plan`` picks,
each on its own single-threaded BLAS (one block on NumPy's BLAS with one Numba thread).
``im2col``/``col2im`` (whole batches, parallel over images) serve ``fastbp.util``.
"""

import numpy as np
from numba import njit, prange

from fastbp.kernels.blas import block_of, gemm, plan
from fastbp.kernels.dispatch import FASTMATH, twin

OPTIONS = {"cache": True, "nogil": True, "fastmath": FASTMATH, "error_model": "numpy"}


@njit(inline="always", **OPTIONS)
def image_patches(image, col, fh, fw, stride, pad, oh, ow, to_col):
    """Pair each row k = (c*FH + i)*FW + j of col[K, P] with its patch positions in
    image[C, H, W]: ``to_col`` fills the row from the image (zeros where a patch leaves
    it), else the row is added onto the image (cropped). Each caller passes a constant
    ``to_col``, so its inlined copy keeps only its own branch."""
    c_count, h, w = image.shape
    for c in range(c_count):
        for i in range(fh):
            for j in range(fw):
                row = col[(c * fh + i) * fw + j]
                for oy in range(oh):
                    y = oy * stride + i - pad
                    base = oy * ow
                    if y < 0 or y >= h:
                        if to_col:
                            row[base : base + ow] = 0
                        continue
                    for ox in range(ow):
                        xx = ox * stride + j - pad
                        if to_col:
                            row[base + ox] = image[c, y, xx] if 0 <= xx < w else 0
                        elif 0 <= xx < w:
                            image[c, y, xx] += row[base + ox]


@njit(**OPTIONS)
def im2col_image(x, fh, fw, stride, pad, oh, ow, col):
    """col[K, P] = the patches of one image x[C, H, W] (zeros where they leave x)."""
    image_patches(x, col, fh, fw, stride, pad, oh, ow, True)


@njit(**OPTIONS)
def col2im_image(col, fh, fw, stride, pad, oh, ow, dx):
    """dx[C, H, W] = the patch gradients col[K, P] summed back onto one image (cropped)."""
    dx[:] = 0
    image_patches(dx, col, fh, fw, stride, pad, oh, ow, False)


@twin
def im2col(x, col, fh, fw, stride, pad, oh, ow):
    """col[N, K, P] = the patches of every image of x[N, C, H, W]."""
    for n in prange(x.shape[0]):
        im2col_image(x[n], fh, fw, stride, pad, oh, ow, col[n])


@twin
def col2im(col, dx, fh, fw, stride, pad, oh, ow):
    """dx[N, C, H, W] = col[N, K, P] summed back onto every image."""
    for n in prange(dx.shape[0]):
        col2im_image(col[n], fh, fw, stride, pad, oh, ow, dx[n])


@njit(**OPTIONS)
def conv_forward_images(x, Wm, b, col, out, fh, fw, stride, pad, oh, ow, lo, hi, own):
    """For images lo..hi-1: col[n] = patches of x[n]; out[n, FN, P] = Wm @ col[n] + b
    (``own``: the GEMMs on the calling thread's private BLAS, ``blas.gemm``)."""
    for n in range(lo, hi):
        im2col_image(x[n], fh, fw, stride, pad, oh, ow, col[n])
        out_n = out[n]
        gemm(Wm, col[n], out_n, False, False, own)
        for f in range(out_n.shape[0]):
            out_n[f] += b[f]


@njit(**OPTIONS)
def conv_backward_images(
    dout, Wm, col, dx, dW, db, dW_n, dcol, fh, fw, stride, pad, oh, ow, need_dx, lo, hi, own
):
    """Gradients of images lo..hi-1, added to dW[FN, K] and db[FN] (zero them first):
    dW += dout[n] @ col[n].T, db += dout[n] summed over positions, and (if need_dx)
    dx[n] = col2im(Wm.T @ dout[n]). dW_n[FN, K] and dcol[K, P] are scratch."""
    fn = Wm.shape[0]
    for n in range(lo, hi):
        d = dout[n]
        gemm(d, col[n], dW_n, False, True, own)
        for f in range(fn):
            dW[f] += dW_n[f]
            s = 0.0
            for p in range(d.shape[1]):
                s += d[f, p]
            db[f] += s
        if need_dx:
            gemm(Wm, d, dcol, True, False, own)
            col2im_image(dcol, fh, fw, stride, pad, oh, ow, dx[n])


@twin
def conv_forward(x, Wm, b, col, out, fh, fw, stride, pad, oh, ow, blocks, own):
    """out[N, FN, P] = convolution of x[N, C, H, W] with Wm[FN, K] plus b[FN]; fills
    col. The images are cut into ``blocks`` blocks (one per thread in the parallel build)."""
    n = x.shape[0]
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, n)
        conv_forward_images(x, Wm, b, col, out, fh, fw, stride, pad, oh, ow, lo, hi, own)


@twin
def conv_backward(
    dout, Wm, col, dx, dW, db, dWp, dbp, dW_n, dcol, fh, fw, stride, pad, oh, ow, need_dx, own
):
    """dW[FN, K], db[FN] and (if need_dx) dx[N, C, H, W] from dout[N, FN, P] and the
    forward's col[N, K, P], on P = dWp.shape[0] blocks of images: block p sums its images'
    dW and db into dWp[p], dbp[p] (added after, in block order), with its own scratch
    dW_n[p] and dcol[p]."""
    blocks = dWp.shape[0]
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, dout.shape[0])
        dWp[p] = 0
        dbp[p] = 0
        conv_backward_images(
            dout, Wm, col, dx, dWp[p], dbp[p], dW_n[p], dcol[p], fh, fw, stride, pad, oh, ow,
            need_dx, lo, hi, own,
        )  # fmt: skip
    dW[:] = dWp[0]
    db[:] = dbp[0]
    for p in range(1, blocks):
        dW += dWp[p]
        db += dbp[p]


def forward(x, Wm, b, col, out, fh, fw, stride, pad, oh, ow):
    """``conv_forward`` on the blocks ``blas.plan`` picks (by multiply-adds)."""
    build, blocks, own = plan(conv_forward, out.size * Wm.shape[1])
    build(x, Wm, b, col, out, fh, fw, stride, pad, oh, ow, blocks, own)


def backward(dout, Wm, col, dx, dW, db, fh, fw, stride, pad, oh, ow, need_dx):
    """``conv_backward`` on the blocks ``blas.plan`` picks; dW[FN, K], db[FN] out."""
    build, blocks, own = plan(conv_backward, dout.size * Wm.shape[1])
    fn, k = Wm.shape
    dt = Wm.dtype
    scratch = (np.empty((blocks, fn, k), dt), np.empty((blocks, fn), dt))
    scratch += (np.empty((blocks, fn, k), dt), np.empty((blocks, k, oh * ow), dt))
    build(dout, Wm, col, dx, dW, db, *scratch, fh, fw, stride, pad, oh, ow, need_dx, own)
