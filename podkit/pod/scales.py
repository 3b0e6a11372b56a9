"""`podkit scales`: the dilations a GSL detector learned, per layer, over N training images.

N images drawn at random (seeded: the first N of a file are often one scene or one source)
go through the model one at a time in eval mode at the test size without augmentation; each
GlobalScaleConv's predicted (d_h, d_w) is recorded and summarised as mean and std, the
numbers of the POD paper's Table 3 and Figure 6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from podkit.data import LoadedDataset, load_dataset
from podkit.data.loader import DetectionDataset, eval_batches, make_loader
from podkit.models.checkpoint import load_detector
from podkit.models.gsl import gsl_convs


@torch.no_grad()
def collect_scales(
    model: torch.nn.Module,
    dataset: LoadedDataset,
    num_images: int,
    min_size: int,
    max_size: int,
    device,
    progress=None,
    seed: int = 0,
) -> dict[str, Any]:
    layers = gsl_convs(model)
    if not layers:
        raise ValueError("this model has no GSL convs: train it with model.gsl=true first")
    records = draw_records(dataset.records, num_images, seed)
    loader = make_loader(
        DetectionDataset(records, max_size), eval_batches(len(records), 1, min_size), workers=0
    )
    was_training = model.training
    model.eval()
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    for batch in loader:
        model(batch.images.to(device))
        for name, conv in layers:
            seen[name].append(conv.last_scales.cpu())
        if progress is not None:
            progress()
    model.train(was_training)
    out = []
    for name, _ in layers:
        s = torch.cat(seen[name]).double()
        std = s.std(dim=0, unbiased=True) if len(s) > 1 else torch.zeros(2, dtype=s.dtype)
        out.append(
            {
                "name": name,
                "d_h_mean": float(s[:, 0].mean()),
                "d_h_std": float(std[0]),
                "d_w_mean": float(s[:, 1].mean()),
                "d_w_std": float(std[1]),
            }
        )
    return {"images": len(records), "seed": seed, "layers": out}


def draw_records(records: list, n: int, seed: int) -> list:
    """n records drawn without replacement (all of them if n >= len), in file order."""
    if n >= len(records):
        return list(records)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
    return [records[i] for i in sorted(order[:n].tolist())]


def mean_scales(scales: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """layer name -> (d_h, d_w) from a scales.json document."""
    try:
        return {
            layer["name"]: (float(layer["d_h_mean"]), float(layer["d_w_mean"]))
            for layer in scales["layers"]
        }
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a scales.json document (missing {exc})") from exc


def plot_scales(scales: dict[str, Any], path: str | Path) -> None:
    """Mean +- std of d_h and d_w per layer (the paper's Figure 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = scales["layers"]
    x = range(len(layers))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 3.6))
    ax.errorbar(
        [i - 0.1 for i in x],
        [lay["d_h_mean"] for lay in layers],
        yerr=[lay["d_h_std"] for lay in layers],
        fmt="o",
        label="d_h",
        capsize=2,
    )
    ax.errorbar(
        [i + 0.1 for i in x],
        [lay["d_w_mean"] for lay in layers],
        yerr=[lay["d_w_std"] for lay in layers],
        fmt="s",
        label="d_w",
        capsize=2,
    )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(list(x))
    ax.set_xticklabels([_short(lay["name"]) for lay in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("learned dilation")
    ax.set_title(f"GSL learned scales over {scales['images']} images (mean +- std)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(name: str) -> str:
    return name.replace("backbone.body.", "").replace("roi_heads.box_head.", "")


def scales_from_checkpoint(
    path: str | Path, num_images: int, progress=None, seed: int = 0
) -> dict[str, Any]:
    """`podkit scales`: a GSL checkpoint's learned scales over N training images drawn at
    random (`seed`)."""
    model, cfg, _, device = load_detector(path)
    if not cfg.model.gsl:
        raise ValueError(f"{path}: not a GSL checkpoint (model.gsl is false)")
    dataset = load_dataset(cfg.data.train, cfg.data.max_image_pixels)
    return collect_scales(
        model,
        dataset,
        num_images,
        cfg.data.test_min_size,
        cfg.data.max_size,
        device,
        progress,
        seed,
    )
