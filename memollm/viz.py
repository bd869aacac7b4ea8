"""Plots shared by the notebooks and the bench/eval commands; one helper saves figures."""

from __future__ import annotations

import os
from pathlib import Path

FIGURES_DIR = Path(os.environ.get("MEMOLLM_FIGURES", Path(__file__).resolve().parent.parent / "figures"))


def save_figure(fig, name: str, directory: str | os.PathLike | None = None) -> Path:
    """Save ``fig`` as ``<figures>/<name>.png`` (150 dpi, tight) and return the path.

    Notebooks name figures after themselves (``01_forgetting_curve_curves``), commands
    after the command (``bench_tokens_per_second``).
    """
    folder = Path(directory) if directory is not None else FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
