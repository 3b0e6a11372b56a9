"""The `podkit` command line: options -> config -> one library call -> print.

User errors (bad files, bad options) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from podkit.errors import BackendUnavailable, ParityError
from podkit.export import BACKENDS, precisions, targets
from podkit.outputs import check_distinct, check_output, check_writable, write_text

app = typer.Typer(
    help="podkit: scale-aware detectors, fast in production.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # a path or an error stays on one line in logs
# what the export table builds, for help lines
ARTEFACTS = ", ".join(b.suffix or f"a {b.name} folder" for b in BACKENDS.values())
MODEL_HELP = f"A podkit checkpoint, or an artefact from podkit export ({ARTEFACTS})."


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"podkit {version('podkit')}")
        except PackageNotFoundError:
            console.print("podkit (not installed: run from a source tree)")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """podkit: train scale-aware detectors, decompose GSL into FD, export and benchmark."""


def user_errors(fn):
    """Turn the library's user-facing errors into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, KeyError, BackendUnavailable) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            if isinstance(exc, OSError) and exc.filename is not None:  # PermissionError, ...
                message = f"{exc.filename}: {exc.strerror}"
            console.print(
                f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except ParityError as exc:  # the artefact is written, but computes something else
            console.print(f"[bold red]parity check failed:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


data_app = typer.Typer(
    help="Data sets: generate the built-in ones, inspect one.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@data_app.command("synth")
@user_errors
def data_synth(
    out: Path = typer.Argument(
        ..., help="Folder to write {train,val}/*.png and annotations/{train,val}.json."
    ),
    train: int = typer.Option(2000, help="Training images."),
    val: int = typer.Option(300, help="Validation images."),
    size: int | None = typer.Option(
        None,
        help="standard preset: typical image side in pixels, each side +-15 % (default 256).",
    ),
    preset: str = typer.Option(
        "standard",
        help="standard (256 px, objects 8 px to most of the image), scale (the scale "
        "benchmark: 384-512 px, objects from 4 px; use with --val 1000) or sites (one class of "
        "dense 8-60 px vehicles in 320 px overhead tiles; training tiles from one site, "
        "validation tiles from four others: a small real-like set with a domain shift) or "
        "aerial (2000-4000 px images, 30-90 objects of 6-40 px and a few large ones: for "
        "--tile and data.tile).",
    ),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same set."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a set already written in OUT."
    ),
) -> None:
    """Generate a built-in synthetic set (COCO json)."""
    from rich.progress import Progress

    from podkit.data.sites import write_sites_split
    from podkit.data.synthetic import dataset_statistics, preset_style, write_split

    if preset == "sites":
        if size is not None:
            raise ValueError("--size applies to the standard preset (sites: 320 px tiles)")

        def write(split, count, advance):
            return write_sites_split(
                out, split, count, [0] if split == "train" else [1, 2, 3, 4], seed, advance
            )
    else:
        style = preset_style(preset, size)

        def write(split, count, advance):
            return write_split(out, split, count, style, seed, advance)

    for split in ("train", "val"):
        check_output(out / "annotations" / f"{split}.json", "OUT", overwrite=overwrite)
    with Progress(console=console) as progress:
        for split, count in (("train", train), ("val", val)):
            task = progress.add_task(f"synth {split}", total=count)
            path = write(split, count, lambda t=task: progress.advance(t))
            stats = dataset_statistics(path)
            progress.console.print(
                f"{path}: {count} images, {stats['instances_per_image']:.1f} objects/image, "
                f"{100 * stats['instances_small']:.0f} % small; images with small/medium/large: "
                f"{100 * stats['images_with_small']:.0f} / {100 * stats['images_with_medium']:.0f} / {100 * stats['images_with_large']:.0f} %"
            )


@data_app.command("stats")
@user_errors
def data_stats(
    target: Path = typer.Argument(
        ..., help="A config (YAML: both of its splits, as its resize feeds them) or a COCO json."
    ),
    images: Path | None = typer.Option(None, help="The COCO json's image folder."),
    config: Path | None = typer.Option(
        None, help="With a COCO json: the config whose resize and anchors to assume."
    ),
    out: Path = typer.Option(Path("data_stats"), help="Folder for stats.json and stats.png."),
) -> None:
    """Images, objects, box sizes as fed, classes and anchor coverage per split, with warnings."""
    import numpy as np
    from rich.table import Table

    from podkit.config import DatasetConfig, load_config
    from podkit.data import load_dataset
    from podkit.data.stats import dataset_stats, write_stats
    from podkit.data.tiles import tile_training_set

    if target.suffix in (".yaml", ".yml"):
        cfg = load_config(target)
        splits = {"train": cfg.data.train, "val": cfg.data.val}
    elif target.suffix == ".json":
        if images is None:
            raise ValueError(f"{target}: a COCO json needs --images (its image folder)")
        cfg = load_config(config)
        splits = {target.stem: DatasetConfig(format="coco", ann=str(target), images=str(images))}
    else:
        raise ValueError(f"{target}: expected a config (.yaml) or COCO annotations (.json)")
    loaded = {
        name: load_dataset(d, cfg.data.max_image_pixels) for name, d in splits.items() if d.ann
    }
    if "train" in loaded:  # as data.tile feeds them: tiles of the training images
        note = tile_training_set(loaded["train"], cfg.data.tile)
        if note:
            console.print(note, highlight=False)
    stats = dataset_stats(cfg, loaded)
    table = Table("", *[s.split for s in stats], title=f"{target} as fed")
    rows = [
        ("images", lambda s: str(s.images)),
        ("width min/median/max", lambda s: "/".join(map(str, s.image_sizes["width"]))),
        ("height min/median/max", lambda s: "/".join(map(str, s.image_sizes["height"]))),
        ("resized to min_size", lambda s: str(s.fed_min_size)),
        ("objects (ignore regions)", lambda s: f"{s.objects} ({s.ignore_regions})"),
        (
            "objects/image mean, max",
            lambda s: f"{s.objects_per_image['mean']:.1f}, {s.objects_per_image['max']}",
        ),
        ("images without objects", lambda s: str(s.objects_per_image["without"])),
        (
            "box side median (px as fed)",
            lambda s: f"{float(np.median(s.box_sizes)) if s.box_sizes else 0:.1f}",
        ),
        (
            "small / medium / large %",
            lambda s: " / ".join(f"{100 * v:.0f}" for v in s.shares.values()),
        ),
        ("boxes an anchor matches", lambda s: f"{100 * s.anchor_match:.0f} %"),
        ("clipped / dropped boxes", lambda s: f"{s.clipped} / {s.dropped}"),
    ]
    for name, cell in rows:
        table.add_row(name, *[cell(s) for s in stats])
    console.print(table)
    for s in stats:
        counts = ", ".join(f"{k} {v}" for k, v in s.classes.items())
        console.print(f"{s.split} classes: {counts}", highlight=False)
    for s in stats:
        for line in s.warnings:
            console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    for path in write_stats(stats, out):
        console.print(f"wrote {path}", highlight=False)


@app.command()
@user_errors
def train(
    config: Path | None = typer.Argument(
        None, help="YAML config (see configs/); with --resume the run's own config.yaml is used."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Run folder: config.yaml, last.pt, metrics.jsonl, eval.json."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config key: --set train.max_iter=100 (value parsed as YAML)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from OUT/last.pt with OUT/config.yaml (+ --set)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start over in a folder holding an earlier run (removes it)."
    ),
) -> None:
    """Train a detector (torchrun --nproc_per_node N -m podkit.cli train ... for several processes)."""
    from podkit.config import load_config
    from podkit.train.loop import NonFiniteLossError
    from podkit.train.loop import train as run_training

    if resume:
        if config is not None and config.resolve() != (out / "config.yaml").resolve():
            console.print(
                f"resuming with the run's own {out / 'config.yaml'}; {config} is not read"
            )
        cfg = load_config(out / "config.yaml", set_)
    elif config is None:
        raise ValueError("train: give a config file (or --resume --out RUN to continue a run)")
    else:
        cfg = load_config(config, set_)
    try:
        result = run_training(cfg, out, resume=resume, console=console, overwrite=overwrite)
    except NonFiniteLossError as exc:
        console.print(f"[bold red]stopped:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if result.status == "interrupted":
        console.print(
            f"interrupted at iteration {result.iteration}; checkpoint {out / 'last.pt'} saved, continue with --resume"
        )
        raise typer.Exit(130)
    console.print(f"done: {result.iteration} iterations, checkpoint {out / 'last.pt'}")


# sliced inference, the same three options on eval and predict
TILE_OPTION = typer.Option(
    None,
    "--tile",
    help="Sliced inference: SIZE x SIZE tiles (a multiple of 32) at their own pixels.",
)
OVERLAP_OPTION = typer.Option(
    0.2, "--overlap", help="--tile: overlap of neighbouring tiles, in [0, 1)."
)
TILE_WHOLE_OPTION = typer.Option(
    False, "--tile-whole", help="--tile: add the whole image at the test size (large objects)."
)


@app.command("eval")
@user_errors
def eval_(
    checkpoint: Path = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(Path("eval.json"), "--out", help="Where to write the metrics."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override the saved config, e.g. --set data.val.ann=other.json."
    ),
    multiscale: bool = typer.Option(
        False, "--multiscale", help="Test on every resolution of eval.pyramid and merge."
    ),
    snip: bool = typer.Option(
        False, "--snip", help="Multi-scale, each resolution keeping its valid range (SNIP)."
    ),
    pyramid: str | None = typer.Option(
        None, "--pyramid", help="Pyramid for --multiscale/--snip: coco, synthetic or fit:SIZE."
    ),
    merge: str | None = typer.Option(
        None, "--merge", help="soft_nms_linear (default), soft_nms_gaussian or nms."
    ),
    tile: int | None = TILE_OPTION,
    overlap: float = OVERLAP_OPTION,
    tile_whole: bool = TILE_WHOLE_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """COCO metrics (AP, AP50, AP75, APs/m/l, AP60-AP90) of a checkpoint or an exported
    artefact on its config's data.val, with the same pre-processing for both."""
    import json

    from podkit.evaluation.artefacts import evaluate_path

    overrides = list(set_)
    overrides += ["eval.multiscale=true"] if multiscale else []
    overrides += ["eval.snip=true"] if snip else []
    overrides += [f"eval.pyramid={pyramid}"] if pyramid else []
    overrides += [f"eval.merge={merge}"] if merge else []
    overrides += tile_overrides(tile, overlap, tile_whole)
    check_output(out, "--out", (".json",), [checkpoint], overwrite)
    metrics = evaluate_path(checkpoint, overrides, console=console)
    write_text(out, json.dumps(metrics, indent=2))
    console.print(f"wrote {out}")


def tile_overrides(tile: int | None, overlap: float, whole: bool) -> list[str]:
    """--tile / --overlap / --tile-whole as eval.tile (checked there: one line when out of range)."""
    if tile is None:
        if whole or overlap != 0.2:
            raise ValueError("--overlap and --tile-whole go with --tile SIZE")
        return []
    return [f"eval.tile={{size: {tile}, overlap: {overlap}, whole: {str(whole).lower()}}}"]


@app.command()
@user_errors
def info(
    checkpoint: Path = typer.Argument(..., help="A podkit checkpoint or an exported artefact."),
) -> None:
    """What a checkpoint holds (model, classes, iteration, methods, sizes), or what an
    exported artefact was made from and takes."""
    from rich.table import Table

    from podkit.models.checkpoint import load_checkpoint

    if checkpoint.suffix != ".pt":
        from podkit.evaluation.artefacts import is_artefact

        if is_artefact(checkpoint):
            artefact_info(checkpoint)
            return
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]

    def get(*keys: str):  # "?" where an older or foreign config lacks the key
        node = cfg
        for key in keys:
            node = node.get(key, "?") if isinstance(node, dict) else "?"
        return node

    table = Table(title=str(checkpoint), show_header=False)
    n_params = sum(
        v.numel()
        for k, v in ckpt["model"].items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    kind = "FD (decomposed)" if get("model", "fd_plan") not in (None, "?") else (
        "GSL" if get("model", "gsl") is True else "baseline")  # fmt: skip
    classes = ckpt.get("classes", [])
    rows = [
        ("kind", kind),
        ("model", f"{get('model', 'arch')} R{get('model', 'depth')} width {get('model', 'width')}"),
        ("parameters", f"{n_params / 1e6:.2f}M"),
        ("classes", f"{len(classes)}: {', '.join(map(str, classes))}"),
        ("iteration", f"{ckpt.get('iteration', '?')} of {get('train', 'max_iter')}"),
        ("methods", ", ".join(str(m.get("name")) for m in cfg.get("methods", [])) or "none"),
        ("train sizes", f"min {get('data', 'min_size')} max {get('data', 'max_size')}"),
        ("holds", ", ".join(sorted(ckpt))),
    ]
    source = ckpt.get("converted_from")
    if source:  # `podkit convert`: no podkit training yet
        rows[4] = ("converted from", f"{source['source']} {source['arch']} ({source['file']})")
    if ckpt.get("best"):
        rows.insert(
            5, ("best", "{metric} {value:.2f} at iteration {iteration}".format(**ckpt["best"]))
        )
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def artefact_info(path: Path) -> None:
    """The record an exported artefact carries (podkit.export.metadata)."""
    from rich.table import Table

    from podkit.export import read_record

    record = read_record(path)
    height, width = record["input_size"]
    classes = record.get("classes", [])
    table = Table(title=f"{path} (an exported artefact: use eval, predict, bench latency)",
                  show_header=False)  # fmt: skip
    rows = [
        ("made from", record["checkpoint"]),
        ("input", f"{height}x{width}" + (" (any size)" if record["dynamic"] else " (static)")),
        ("batch", str(record.get("batch") or "any")),
        ("precision", str(record.get("precision", "fp32"))),
        ("NMS in graph", "yes" if record["nms"] else "no (raw outputs)"),
        ("classes", f"{len(classes)}: {', '.join(map(str, classes))}"),
        ("outputs", ", ".join(record["outputs"])),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@app.command()
@user_errors
def scales(
    checkpoint: Path = typer.Argument(..., help="A GSL checkpoint (trained with model.gsl=true)."),
    images: int = typer.Option(
        500, "--images", help="Training images to average over, drawn at random (no augmentation)."
    ),
    out: Path = typer.Option(Path("scales.json"), "--out", help="Where to write the scales."),
    plot: Path | None = typer.Option(None, "--plot", help="Also plot mean +- std per layer (PNG)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draw of the images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Learned dilations (d_h, d_w) per GSL conv: mean and std over N images."""
    import json

    from rich.progress import Progress
    from rich.table import Table

    from podkit.pod.scales import plot_scales, scales_from_checkpoint

    check_distinct({"--out": out, "--plot": plot})
    check_output(out, "--out", (".json",), [checkpoint], overwrite)
    check_output(plot, "--plot", (".png",), [checkpoint], overwrite)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("scales", total=images)
        result = scales_from_checkpoint(checkpoint, images, lambda: progress.advance(task), seed)
    table = Table(title=f"learned scales over {result['images']} images")
    for column in ("layer", "d_h", "d_w"):
        table.add_column(column)
    for layer in result["layers"]:
        table.add_row(
            layer["name"],
            f"{layer['d_h_mean']:.2f} +- {layer['d_h_std']:.2f}",
            f"{layer['d_w_mean']:.2f} +- {layer['d_w_std']:.2f}",
        )
    console.print(table)
    write_text(out, json.dumps(result, indent=2))
    console.print(f"wrote {out}")
    if plot is not None:
        plot_scales(result, plot)
        console.print(f"wrote {plot}")


@app.command()
@user_errors
def decompose(
    checkpoint: Path = typer.Argument(..., help="A GSL checkpoint."),
    scales_file: Path = typer.Option(..., "--scales", help="scales.json from `podkit scales`."),
    out: Path = typer.Option(..., "--out", help="The FD checkpoint to write."),
    plan_file: Path | None = typer.Option(None, "--plan", help="Also write the plan as JSON."),
    zero_dilation_init: str = typer.Option(
        "sum", help="Size-1 kernel directions from the 'sum' of the 3 taps or the 'centre' tap."
    ),
    channel_multiple: int = typer.Option(
        16, help="Round the upper part's channels to this multiple (1: the paper's exact alpha)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Split every GSL conv into integer-dilation convs (weights transferred): the FD network."""
    import json

    from rich.table import Table

    from podkit.pod.decompose import decompose_checkpoint

    check_distinct({"--out": out, "--plan": plan_file})
    check_output(out, "--out", (".pt",), [checkpoint, scales_file], overwrite)
    check_output(plan_file, "--plan", (".json",), [checkpoint, scales_file], overwrite)
    try:
        scales_doc = json.loads(scales_file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{scales_file}: scales file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{scales_file}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    plan = decompose_checkpoint(checkpoint, scales_doc, out, channel_multiple, zero_dilation_init)
    table = Table(title="scale decomposition plan")
    table.add_column("layer", no_wrap=True, min_width=max(len(layer["name"]) for layer in plan))
    for column in ("d_h", "d_w", "alpha", "multiple", "parts (dilation / kernel / channels)"):
        table.add_column(column, overflow="fold")
    for layer in plan:
        desc = " + ".join(
            f"d{tuple(p['dilation'])} k{p['kernel'][0]}x{p['kernel'][1]} c{p['out_channels']}"
            for p in layer["parts"]
        )
        table.add_row(
            layer["name"],
            f"{layer['d_h']:.2f}",
            f"{layer['d_w']:.2f}",
            f"{layer['alpha']:.2f}",
            # the rounding multiple, marked where it was halved to keep both parts of a split
            f"{layer['channel_multiple']}"
            + ("" if layer["channel_multiple"] == channel_multiple else " (halved)"),
            desc,
        )
    console.print(table)
    if plan_file is not None:
        write_text(plan_file, json.dumps(plan, indent=2))
        console.print(f"wrote {plan_file}")
    console.print(f"wrote {out}")


def predict_frames(model, video, out, every, score_threshold, draw, overrides, overwrite):
    """`podkit predict MODEL VIDEO`: frames through podkit.evaluation.video, with a frame bar."""
    from rich.progress import Progress

    from podkit.evaluation.video import predict_video

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("frames", total=None)
        summary = predict_video(
            model, video, out, every, score_threshold, draw, overrides,
            lambda done, total: progress.update(task, completed=done, total=total), overwrite,
        )  # fmt: skip
    console.print(
        f"{summary['frames']} frames, {summary['detections']} detections; wrote "
        f"{out / 'detections.json'}" + (f" and {out / 'drawn.mp4'}" if draw else "")
    )


@app.command()
@user_errors
def convert(
    weights: Path = typer.Argument(..., help="The other framework's weights file."),
    source: str = typer.Option(..., "--from", help="torchvision, detectron2 or mmdet."),
    arch: str = typer.Option(..., "--arch", help="The source's own name for the model."),
    out: Path = typer.Option(..., "--out", help="The podkit checkpoint to write (.pt)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """A model zoo's detector as a podkit checkpoint (eval, predict, export, train from it)."""
    from podkit.convert import convert_weights

    check_output(out, "--out", (".pt",), [weights], overwrite)
    convert_weights(
        weights, source, arch, out, log=lambda line: console.print(line, highlight=False)
    )


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A podkit checkpoint (baseline, GSL or FD)."),
    target: str = typer.Option(..., "--target", help=f"{targets()}."),
    out: Path | None = typer.Option(
        None, "--out", help=f"Artefact to write ({ARTEFACTS}); not with --check-only."
    ),
    input_size: str = typer.Option("512x512", help="HxW, multiples of 32."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Free height and width (not TVM)."),
    nms: bool = typer.Option(
        True, "--nms/--no-nms", help="Post-processing in the graph, or raw outputs."
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="ONNX / TensorRT: half precision (for GPUs), I/O stays float32."
    ),
    bf16: bool = typer.Option(
        False, "--bf16", help="OpenVINO: bfloat16 inference (CPUs with bf16 units)."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="INT8, calibrated on training images (ONNX QDQ; OpenVINO: NNCF)."
    ),
    calib: int = typer.Option(64, "--calib", help="--int8: how many calibration images."),
    calib_data: list[str] = typer.Option(
        [],
        "--calib-data",
        help="--int8: calibrate on these images (files, folders, globs; or a COCO json, then "
        "its image folder) instead of the checkpoint's training set.",
    ),
    batch: int = typer.Option(1, "--batch", help="Images per call (NMS per image)."),
    dynamic_batch: bool = typer.Option(
        False, "--dynamic-batch", help="Any number of images per call (not with --batch)."
    ),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Compare with PyTorch after export."
    ),
    check_only: bool = typer.Option(False, "--check-only", help="TensorRT: only the op audit."),
    device: str = typer.Option("cpu", help="cpu or cuda (TVM target, onnxruntime provider)."),
    tune_trials: int = typer.Option(0, help="TVM: MetaSchedule trials per task (0: untuned)."),
    tune_db: Path | None = typer.Option(
        None, help="TVM: tuning database folder, reused across runs."
    ),
    name: str = typer.Option("detector", "--name", help="Triton: the model's name."),
    triton_model: str = typer.Option(
        "onnx", "--triton-model", help="Triton: the model it serves, onnx or tensorrt (a plan)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artefact."),
) -> None:
    """Export a checkpoint to a deployment target and check it against PyTorch."""
    from podkit.config import parse_size
    from podkit.export import ExportOptions, export_checkpoint, get_backend

    backend = get_backend(target)
    if out is not None:
        suffixes = (backend.suffix,) if backend.suffix else ()
        others = [f for f in backend.artefact_files(out) if f != out]
        folder = not backend.suffix
        check_output(out, "--out", suffixes, [checkpoint, tune_db], overwrite, others, folder)
        if folder and out.exists() and not backend.owns(out):
            raise ValueError(f"{out}: exists and is not a podkit {target} repository; "
                             "choose another --out")  # fmt: skip
    if calib_data and not int8:
        raise ValueError("--calib-data calibrates INT8: add --int8")
    chosen = [p for p, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8)) if on]
    if len(chosen) > 1:
        raise ValueError(f"--{' and --'.join(chosen)}: choose one precision")
    if dynamic_batch and batch != 1:
        raise ValueError(f"--dynamic-batch and --batch {batch}: choose one")
    opts = ExportOptions(
        parse_size(input_size), dynamic, None if dynamic_batch else batch, nms,
        chosen[0] if chosen else "fp32", check=check, check_only=check_only, device=device,
        calib=calib, calib_data=tuple(calib_data), tune_trials=tune_trials, tune_db=tune_db,
        name=name, inner=triton_model,
    )  # fmt: skip
    report = export_checkpoint(checkpoint, target, out, opts, log=console.print)
    if check_only:
        raise typer.Exit(1 if report["audit"] else 0)
    console.print(f"wrote {report['path']}")


@app.command()
@user_errors
def predict(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    images: list[str] = typer.Argument(
        ..., help="Image files, folders or glob patterns; or one video file."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for detections.json, images.json, drawn/."),
    score_threshold: float = typer.Option(
        0.3, "--score-threshold", help="Drawn boxes and per-image JSON: this score and above."
    ),
    per_image_json: bool = typer.Option(
        False, "--per-image-json", help="Also write json/STEM.json for each image."
    ),
    draw: bool = typer.Option(True, "--draw/--no-draw", help="Write drawn/NAME images."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override the saved config, e.g. --set data.test_min_size=640."
    ),
    tile: int | None = TILE_OPTION,
    overlap: float = OVERLAP_OPTION,
    tile_whole: bool = TILE_WHOLE_OPTION,
    every: int = typer.Option(1, "--every", help="A video: detect every N-th frame."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the files of an earlier prediction in --out."
    ),
) -> None:
    """Detect objects on your own images or a video: COCO results JSON and drawn images (a
    video: detections per frame, the frame index as image id, and OUT/drawn.mp4)."""
    from rich.progress import Progress

    from podkit.evaluation.predict import predict_images
    from podkit.evaluation.video import is_video

    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must lie in [0, 1], got {score_threshold}")
    overrides = [*set_, *tile_overrides(tile, overlap, tile_whole)]
    check_writable(out)
    if len(images) == 1 and is_video(Path(images[0])):
        predict_frames(model, Path(images[0]), out, every, score_threshold, draw, overrides,
                       overwrite)  # fmt: skip
        return
    if every != 1:
        raise ValueError("--every picks a video's frames: give one video file")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("predict", total=None)  # images (tiled: one per image)
        summary = predict_images(
            model, images, out, score_threshold, per_image_json, draw, overrides,
            lambda n: progress.advance(task, n), overwrite,
        )  # fmt: skip
    console.print(
        f"{summary['images']} images, {summary['detections']} detections "
        f"({summary['shown']} at score >= {score_threshold}); wrote {out / 'detections.json'}"
        + (f" and {out / 'drawn'}" if draw else "")
    )


bench_app = typer.Typer(
    help="Benchmarks: latency across models and backends.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("latency")
@user_errors
def bench_latency(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoints; the first is the baseline."),
    backend: str = typer.Option(
        "torch,onnxruntime,tvm",
        help="Comma list of torch, torch-compile, "
        + ", ".join(b.runtime for b in BACKENDS.values())
        + ".",
    ),
    input_size: str = typer.Option("512x512", help="HxW, multiples of 32."),
    warmup: int = typer.Option(3, help="Untimed calls per pair."),
    iters: int = typer.Option(20, help="Timed calls per pair (interleaved)."),
    threads: int | None = typer.Option(
        None,
        help="CPU threads of PyTorch and the runtimes (default: PyTorch's own count, the "
        "physical cores unless OMP_NUM_THREADS sets it).",
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    labels: str | None = typer.Option(
        None, help="Comma list of model names (default: file names)."
    ),
    baseline: str | None = typer.Option(None, help="Label of the baseline (default: the first)."),
    tune_trials: int = typer.Option(0, help="TVM: MetaSchedule trials per task."),
    tune_db: Path | None = typer.Option(None, help="TVM tuning database (default: in the cache)."),
    cache_dir: Path = typer.Option(Path(".podkit_cache"), help="Where exports are cached."),
    check: bool = typer.Option(True, "--check/--no-check", help="Parity-check each new export."),
    out: Path = typer.Option(Path("latency.json"), "--out", help="Report JSON."),
    md: Path | None = typer.Option(None, "--md", help="Also write a markdown table."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write a bar chart (PNG)."),
    data: bool = typer.Option(
        False, "--data", help="Also score each model x backend on its config's data.val."
    ),
    max_ap_drop: float = typer.Option(
        0.5,
        "--max-ap-drop",
        help="With --data: flag (exit 1) an artefact this far under its checkpoint.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="With --data: override the saved config, e.g. --set data.val.ann=..."
    ),
    precision: str = typer.Option(
        "fp32", help=f"Comma list of {', '.join(precisions())} (artefacts that build them)."
    ),
    batch: int = typer.Option(1, "--batch", help="Images per call (static batch export)."),
    calib: int = typer.Option(64, "--calib", help="INT8 calibration images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Latency of each checkpoint on each backend, timed side by side, with ratios (and, with
    --data, the AP each artefact keeps)."""
    import json

    from rich.progress import Progress

    from podkit.bench.latency import LatencyOptions, accuracy_failures, run_latency, to_markdown
    from podkit.bench.latency import plot as plot_latency
    from podkit.config import parse_size

    if iters < 1 or warmup < 0:
        raise ValueError(f"--iters must be >= 1 and --warmup >= 0, got {iters} and {warmup}")
    check_distinct({"--out": out, "--md": md, "--plot": plot})
    for path, option, suffix in (
        (out, "--out", ".json"),
        (md, "--md", ".md"),
        (plot, "--plot", ".png"),
    ):
        check_output(path, option, (suffix,), checkpoints, overwrite)
    opts = LatencyOptions(
        input_size=parse_size(input_size), warmup=warmup, iters=iters, threads=threads,
        device=device, tune_trials=tune_trials, tune_db=tune_db, cache_dir=cache_dir,
        check=check, labels=labels.split(",") if labels else [], baseline=baseline,
        accuracy=data, max_ap_drop=max_ap_drop, eval_overrides=list(set_),
        precisions=[p.strip() for p in precision.split(",") if p.strip()], batch=batch,
        calib=calib,
    )  # fmt: skip
    with Progress(console=console) as progress:
        task = progress.add_task("timing", total=iters)
        report = run_latency(
            checkpoints,
            [b.strip() for b in backend.split(",") if b.strip()],
            opts,
            log=progress.console.print,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    table = to_markdown(report)
    console.print(table, highlight=False)
    write_text(out, json.dumps(report, indent=2))
    console.print(f"wrote {out}")
    if md is not None:
        write_text(md, table)
        console.print(f"wrote {md}")
    if plot is not None:
        plot_latency(report, plot)
        console.print(f"wrote {plot}")
    failures = accuracy_failures(report)
    for line in failures:
        console.print(f"[bold red]accuracy:[/] {escape(line)} (limit {max_ap_drop})")
    if failures:
        raise typer.Exit(1)


@app.command()
@user_errors
def plot(
    run: Path = typer.Argument(..., help="A run folder (with metrics.jsonl)."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for the PNGs (default: the run folder)."
    ),
) -> None:
    """Training curves: losses, lr, DST feedback and collages, Dynamic R-CNN's IoU and beta, method state."""
    from podkit.train.plot import plot_run

    check_writable(out / "losses.png" if out is not None else None)
    for path in plot_run(run, out):
        console.print(f"wrote {path}")


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(
        Path("runs/demo"), help="Folder for the demo's data, runs and report.md."
    ),
    iters: int = typer.Option(350, help="Training iterations of the baseline and GSL runs."),
    train_images: int = typer.Option(400, help="Synthetic training images."),
    val_images: int = typer.Option(100, help="Synthetic validation images."),
    size: int = typer.Option(192, help="Image size of the synthetic set (and of the exports)."),
    backends: str = typer.Option("torch,onnxruntime,tvm", help="Backends to export to and time."),
    bench_iters: int = typer.Option(10, help="Timed calls per model and backend."),
) -> None:
    """The whole pipeline on the built-in data, on the CPU: train -> POD -> export -> latency."""
    from podkit.demo import run_demo

    check_writable(out / "report.md")
    run_demo(
        out, iters, train_images, val_images, size, tuple(backends.split(",")), bench_iters,
        console=console,
    )  # fmt: skip


if __name__ == "__main__":
    app()
