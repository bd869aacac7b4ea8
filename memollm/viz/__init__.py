"""Every plot, heat map and widget: ``lessons`` (the notebooks' figures), ``schematics``
(drawings), ``results`` (bench and eval); one helper, ``save_figure``, saves them."""

from __future__ import annotations

from ..notebook import figures_dir
from .figures import save_figure
from .forest import plot_forest
from .lessons import (forgetting_panel, masked_matrix, plot_conversation, plot_forgetting_curves,
                      plot_kept_positions, plot_kv_bytes, plot_logit_difference, plot_masked_raster,
                      plot_reinforcement, plot_retention_by_layer, plot_token_strength, reinforcement_trace,
                      token_heatmap, widget_frontend)
from .rules import plot_review_rules
from .results import (plot_agreement, plot_kv_memory, plot_long_generation, plot_passkey, plot_passkey_summary,
                      plot_ppl, plot_recall, plot_speed, plot_speedup, plot_stream, save_bench_plots)
from .schematics import mask_grid, plot_mask_schematic, plot_soft_delete_schematic

__all__ = ["forgetting_panel", "mask_grid", "masked_matrix", "plot_agreement", "plot_conversation", "plot_forest",
           "plot_forgetting_curves", "plot_kept_positions", "plot_kv_bytes", "plot_kv_memory", "plot_logit_difference", "plot_long_generation",
           "plot_mask_schematic", "plot_masked_raster", "plot_passkey", "plot_passkey_summary", "plot_ppl",
           "plot_recall", "plot_reinforcement", "plot_review_rules", "plot_retention_by_layer", "plot_soft_delete_schematic", "plot_speed",
           "plot_token_strength",
           "plot_speedup", "plot_stream", "reinforcement_trace", "save_bench_plots", "save_figure", "token_heatmap",
           "widget_frontend"]


def __getattr__(name: str):
    """``viz.FIGURES_DIR`` is :func:`memollm.notebook.figures_dir`, resolved when read
    (``$MEMOLLM_FIGURES``, the repository's figures/ from its notebooks/, else ./figures)."""
    if name == "FIGURES_DIR":
        return figures_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
