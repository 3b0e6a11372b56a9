"""Where a run's scalars go besides RUN/metrics.jsonl (train.log): TensorBoard event files
under RUN/tensorboard, or an MLflow run (MLFLOW_TRACKING_URI, else a file store under
RUN/mlruns). Each gets the same scalars as metrics.jsonl, the config and every evaluation."""

from __future__ import annotations

import importlib.util
import json
import numbers
import os
from pathlib import Path

import yaml


def scalars(record: dict) -> dict[str, float]:
    """The numeric entries of a metrics.jsonl record (lists and text left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and k != "iter"
    }


def flat(config: dict, prefix: str = "") -> dict[str, str]:
    """config keys as dotted names (model.rpn.nms_threshold), values as text."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, f"{name}.")
        else:
            out[name] = json.dumps(value)[:250]
    return out


class TensorBoardLog:
    def __init__(self, out: Path, config: dict, resume: bool) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "train.log: tensorboard needs the tensorboard package "
                "(pip install 'podkit[tensorboard]')"
            ) from None
        self.writer = SummaryWriter(str(out / "tensorboard"))
        if not resume:
            self.writer.add_text("config", "    " + yaml.safe_dump(config).replace("\n", "\n    "))

    def scalars(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(f"train/{key}", value, record["iter"])

    def evaluation(self, metrics: dict, iteration: int) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(f"val/{key}", value, iteration)

    def close(self) -> None:
        self.writer.close()


class MLflowLog:
    """One MLflow run per run folder: --resume continues it (its id is in RUN/mlflow_run_id)."""

    def __init__(self, out: Path, config: dict, resume: bool) -> None:
        try:
            import mlflow
        except ImportError:
            raise ValueError(
                "train.log: mlflow needs the mlflow package (pip install 'podkit[mlflow]')"
            ) from None
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # a local file store in the run folder; MLflow keeps that backend for existing users
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "podkit"))
        id_file = out / "mlflow_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else out.name)
        id_file.write_text(self.run.info.run_id + "\n")
        if not run_id:
            mlflow.log_params(flat(config))
            mlflow.log_dict(config, "config.yaml")

    def scalars(self, record: dict) -> None:
        self.mlflow.log_metrics(scalars(record), step=record["iter"])

    def evaluation(self, metrics: dict, iteration: int) -> None:
        self.mlflow.log_metrics({f"val_{k}": v for k, v in scalars(metrics).items()}, iteration)

    def close(self) -> None:
        self.mlflow.end_run()


# train.log name -> (its writer, the package it needs); metrics.jsonl is the loop's own
RUN_LOGS = {"tensorboard": (TensorBoardLog, "tensorboard"), "mlflow": (MLflowLog, "mlflow")}


def check_run_logs(names: list[str]) -> None:
    """A missing package is one line before the run starts, not after its first minutes."""
    for name in names:
        if name in RUN_LOGS and importlib.util.find_spec(RUN_LOGS[name][1]) is None:
            raise ValueError(
                f"train.log: {name} needs the {RUN_LOGS[name][1]} package "
                f"(pip install 'podkit[{name}]')"
            )


def open_run_logs(names: list[str], out: Path, config: dict, resume: bool) -> list:
    return [RUN_LOGS[n][0](out, config, resume) for n in dict.fromkeys(names) if n in RUN_LOGS]
