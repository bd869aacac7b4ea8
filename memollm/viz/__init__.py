"""Every plot, heat map and widget: ``lessons`` (the notebooks' figures), ``schematics``
(drawings), ``results`` (bench and eval); one helper, ``save_figure``, saves them."""

from __future__ import annotations

import os
from pathlib import Path


def __getattr__(name: str):
    """``viz.FIGURES_DIR`` is :func:`memollm.notebook.figures_dir`, resolved when read
    (``$MEMOLLM_FIGURES``, the repository's figures/ from its notebooks/, else ./figures)."""
    if name == "FIGURES_DIR":
        from ..notebook import figures_dir

        return figures_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_figure(fig, name: str, directory: str | os.PathLike | None = None) -> Path:
    """Save ``fig`` as ``<figures>/<name>.png`` (150 dpi, tight) and return the path.

    Notebooks name figures after themselves (``01_forgetting_curve_curves``), commands
    after the command (``bench_tokens_per_second``).
    """
    if directory is None:  # a FIGURES_DIR assigned on the module (tests do) wins over the default
        directory = globals().get("FIGURES_DIR") or __getattr__("FIGURES_DIR")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


# the plots, imported after save_figure, which some of them use
from .lessons import (forgetting_panel, masked_matrix, plot_conversation, plot_forgetting_curves,  # noqa: E402
                      plot_kept_positions, plot_kv_bytes, plot_logit_difference, plot_masked_raster,
                      plot_reinforcement, plot_retention_by_layer, reinforcement_trace, token_heatmap,
                      widget_frontend)
from .results import (plot_agreement, plot_kv_memory, plot_passkey, plot_passkey_summary, plot_ppl,  # noqa: E402
                      plot_recall, plot_speed, plot_speedup, plot_stream, save_bench_plots)
from .schematics import mask_grid, plot_mask_schematic, plot_soft_delete_schematic  # noqa: E402

__all__ = ["forgetting_panel", "mask_grid", "masked_matrix", "plot_agreement", "plot_conversation",
           "plot_forgetting_curves", "plot_kept_positions", "plot_kv_bytes", "plot_kv_memory", "plot_logit_difference",
           "plot_mask_schematic", "plot_masked_raster", "plot_passkey", "plot_passkey_summary", "plot_ppl",
           "plot_recall", "plot_reinforcement", "plot_retention_by_layer", "plot_soft_delete_schematic", "plot_speed",
           "plot_speedup", "plot_stream", "reinforcement_trace", "save_bench_plots", "save_figure", "token_heatmap",
           "widget_frontend"]
