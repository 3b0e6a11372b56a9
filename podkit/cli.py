"""The `podkit` command line: options -> config -> one library call -> print.

User errors (bad files, bad options) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    help="podkit: scale-aware detectors, fast in production.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def main() -> None:
    """podkit: train scale-aware detectors, decompose GSL into FD, export and benchmark."""


def user_errors(fn):
    """Turn the library's user-facing errors into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo's outputs."),
    steps: int = typer.Option(20, help="Training steps of the tiny detectors."),
) -> None:
    """Run the pipeline on built-in data (CPU, a few minutes)."""
    from podkit.demo import run_demo

    run_demo(out, steps=steps, console=console)


if __name__ == "__main__":
    app()
