"""An artefact's outputs against PyTorch's on the same input: raw tensors within a relative
tolerance, detections image by image (same count, labels and order; boxes within a pixel
tolerance that grows with the coordinate, as float32 rounding does; float ties allowed to
swap)."""

from __future__ import annotations

import numpy as np


def compare_outputs(
    names: list[str],
    reference: list[np.ndarray],
    outputs: list[np.ndarray],
    raw_tol: float = 1e-4,
    box_tol: float = 1e-3,
    box_rtol: float = 2e-5,
) -> dict:
    """Compare a backend's outputs with PyTorch's on the same input.

    Raw tensors: max |a - b| / max(1, |a|) <= raw_tol (absolute for small values, relative
    for large). Detections (`num_detections` present), per image of the batch: same count,
    labels and order, each box coordinate x within box_tol + box_rtol |x| pixels (float32
    rounding is relative: 2e-5 of a 1000 px coordinate is 0.02 px); two detections whose
    scores differ by < 1e-5 may swap places (a tie that float rounding orders either way),
    and are counted as `reordered_ties`.
    Returns the figures with `ok`.
    """
    got = dict(zip(names, outputs, strict=True))
    ref = dict(zip(names, reference, strict=True))
    report: dict = {"ok": True}
    if "num_detections" not in got:
        worst = 0.0
        for name in names:
            a, b = ref[name].astype(np.float64), got[name].astype(np.float64)
            if a.shape != b.shape:
                report.update(ok=False, error=f"{name}: shape {b.shape} vs PyTorch {a.shape}")
                return report
            if a.size:
                worst = max(worst, float((np.abs(a - b) / np.maximum(1.0, np.abs(a))).max()))
        report.update(max_rel_error=worst, ok=worst <= raw_tol)
        return report
    per_image = [
        _compare_detections(
            {k: v[i] for k, v in ref.items()},
            {k: v[i] for k, v in got.items()},
            box_tol,
            box_rtol,
        )  # fmt: skip
        for i in range(len(ref["num_detections"]))
    ]
    for i, item in enumerate(per_image):
        if not item["ok"]:
            prefix = f"image {i}: " if len(per_image) > 1 else ""
            return {**item, "error": prefix + item["error"]}
    report.update(
        detections=sum(r["detections"] for r in per_image),
        backend_detections=sum(r["backend_detections"] for r in per_image),
        max_box_error=max(r["max_box_error"] for r in per_image),
        max_score_error=max(r["max_score_error"] for r in per_image),
        reordered_ties=sum(r["reordered_ties"] for r in per_image),
    )
    return report


def _compare_detections(ref: dict, got: dict, box_tol: float, box_rtol: float) -> dict:
    """One image's detections (see compare_outputs)."""
    report: dict = {"ok": True}
    n_ref, n_got = int(ref["num_detections"]), int(got["num_detections"])
    report.update(detections=n_ref, backend_detections=n_got)
    if n_ref != n_got:
        report.update(ok=False, error=f"{n_got} detections vs PyTorch {n_ref}")
        return report
    boxes_r, boxes_g = ref["boxes"][:n_ref], got["boxes"][:n_ref]
    labels_r, labels_g = ref["labels"][:n_ref], got["labels"][:n_ref]
    scores_r, scores_g = ref["scores"][:n_ref], got["scores"][:n_ref]
    ties, worst_box, worst_score = 0, 0.0, 0.0

    def close(i: int, k: int) -> bool:
        return bool(
            (np.abs(boxes_r[i] - boxes_g[k]) <= box_tol + box_rtol * np.abs(boxes_r[i])).all()
        )

    for i in range(n_ref):
        j = i
        same = labels_r[i] == labels_g[i] and close(i, i)
        if not same:  # a tie ordered the other way: the same detection next to it
            near = [
                k
                for k in range(max(0, i - 3), min(n_ref, i + 4))
                if labels_g[k] == labels_r[i]
                and close(i, k)
                and abs(float(scores_r[i]) - float(scores_g[k])) < 1e-5
                and abs(float(scores_r[i]) - float(scores_r[k])) < 1e-5
            ]
            if not near:
                report.update(ok=False, error=f"detection {i} differs (label, box or order)")
                return report
            ties += 1
            j = near[0]
        worst_box = max(worst_box, float(np.abs(boxes_r[i] - boxes_g[j]).max(initial=0.0)))
        worst_score = max(worst_score, abs(float(scores_r[i]) - float(scores_g[j])))
    report.update(max_box_error=worst_box, max_score_error=worst_score, reordered_ties=ties)
    return report


def format_parity(report: dict) -> str:
    """One line: what was compared and how close it came."""
    if "error" in report:
        return f"MISMATCH: {report['error']}"
    if "max_rel_error" in report:
        return f"raw outputs max relative error {report['max_rel_error']:.2e}"
    ties = f", {report['reordered_ties']} tied pairs reordered" if report["reordered_ties"] else ""
    return (
        f"{report['detections']} detections identical: boxes within "
        f"{report['max_box_error']:.1e} px, scores within {report['max_score_error']:.1e}{ties}"
    )
