"""RoIAlign formulations in pure PyTorch, timed side by side (why podkit uses embedding_bag).

Run: .venv/bin/python -m studies.roi_align_speed [--threads 2]
All three compute the same bilinear taps (podkit.ops.roi_align._axis_weights); they differ
only in how the weighted sum over feature rows is done.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from podkit.ops.roi_align import _axis_weights, roi_align


def taps(input, rois, pooled, scale, sampling_ratio):
    n, c, h, w = input.shape
    k = rois.shape[0]
    x1, y1 = rois[:, 1] * scale - 0.5, rois[:, 2] * scale - 0.5
    rw, rh = rois[:, 3] * scale - 0.5 - x1, rois[:, 4] * scale - 0.5 - y1
    s = torch.full((k,), float(sampling_ratio))
    yi, yw = _axis_weights(y1, rh, pooled, s, sampling_ratio, h)
    xi, xw = _axis_weights(x1, rw, pooled, s, sampling_ratio, w)
    b = rois[:, 0].long()
    flat = (b[:, None, None, None, None] * h + yi[:, :, None, :, None]) * w + xi[
        :, None, :, None, :
    ]
    weight = yw[:, :, None, :, None] * xw[:, None, :, None, :]
    return flat.reshape(k * pooled * pooled, -1), weight.reshape(k * pooled * pooled, -1)


def csr_matmul(input, rois, pooled, scale, sampling_ratio):
    n, c, h, w = input.shape
    index, weight = taps(input, rois, pooled, scale, sampling_ratio)
    rows, t = index.shape
    crow = torch.arange(rows + 1) * t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrix = torch.sparse_csr_tensor(
            crow, index.reshape(-1), weight.reshape(-1), (rows, n * h * w)
        )
    features = input.permute(0, 2, 3, 1).contiguous().view(-1, c)
    return (matrix @ features).view(rois.shape[0], pooled, pooled, c).permute(0, 3, 1, 2)


def dense_gather(input, rois, pooled, scale, sampling_ratio):
    n, c, h, w = input.shape
    index, weight = taps(input, rois, pooled, scale, sampling_ratio)
    features = input.permute(0, 2, 3, 1).contiguous().view(-1, c)
    out = (features[index.reshape(-1)].view(*index.shape, c) * weight[..., None]).sum(1)
    return out.view(rois.shape[0], pooled, pooled, c).permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 256, 128, 128, generator=g)  # P2 of a 512x512 image
    xy = torch.rand(1000, 2, generator=g) * 400
    wh = torch.rand(1000, 2, generator=g) * 100 + 4
    rois = torch.cat([torch.zeros(1000, 1), xy, xy + wh], 1)
    impls = {
        "embedding_bag (podkit)": roi_align,
        "sparse CSR matmul": csr_matmul,
        "dense gather": dense_gather,
    }
    reference = roi_align(feature, rois, 7, 0.25, 2)
    times = {name: [] for name in impls}
    with torch.no_grad():
        for name, fn in impls.items():
            assert torch.allclose(fn(feature, rois, 7, 0.25, 2), reference, atol=1e-5), name
        for _ in range(args.repeats):
            for name, fn in impls.items():
                t0 = time.perf_counter()
                fn(feature, rois, 7, 0.25, 2)
                times[name].append(time.perf_counter() - t0)
    print(
        f"RoIAlign 1000 RoIs, 256x128x128 feature, 7x7, sampling 2, {args.threads} threads, median of {args.repeats}"
    )
    for name, ts in times.items():
        print(f"  {name:24s} {statistics.median(ts) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
