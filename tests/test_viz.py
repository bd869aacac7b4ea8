"""memollm.viz: what each figure shows (titles, labels, legends, lines, cells) for records and
simulations, and that figures are saved through save_figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from memollm import MemoryConfig, viz  # noqa: E402
from memollm.config import SEED_RULE  # noqa: E402
from memollm.viz import save_bench_plots  # noqa: E402
from memollm.viz.rules import plot_review_rules, strength_after_reviews, trace_after_retrievals  # noqa: E402


# -- rules: the review-rule lessons simulate what the memory does ------------------------------
SEED = MemoryConfig(sink_tokens=1, **SEED_RULE)


def test_seed_rule_adds_the_same_strength_whatever_the_gap():
    assert strength_after_reviews(SEED, 5).tolist() == strength_after_reviews(SEED, 300).tolist()
    assert strength_after_reviews(SEED, 5)[-1] == 5.0 + 5 * 3.0  # S0 + reviews x gain x share


def test_fsrs_rewards_spacing():
    fsrs = SEED.replace(stability="fsrs")
    massed, spaced = strength_after_reviews(fsrs, 5), strength_after_reviews(fsrs, 300)
    assert massed[-1] < 5.5 < 10.0 < spaced[-1]  # five massed reviews barely move S0 = 5; five spaced double it
    gains = np.diff(spaced)
    assert (gains > 0).all() and (np.diff(gains) < 0).all()  # and it saturates: each review adds less


def test_the_trace_fades_over_a_quarter_budget_and_comes_back_with_each_retrieval():
    default = MemoryConfig(sink_tokens=1, memory_budget=256)  # tau = 64 tokens at S0
    once = trace_after_retrievals(default, [10], steps=200)
    assert once[9] == pytest.approx(0.3, rel=1e-6) and once[9 + 64] == pytest.approx(0.3 * math.exp(-1), rel=0.02)  # S grew a little
    again = trace_after_retrievals(default, range(10, 200, 100), steps=200)
    assert again[109] == pytest.approx(0.3, rel=1e-6) and again[-1] > once[-1] * 4


def test_figure_has_two_labelled_panels():
    fig = plot_review_rules()
    left, right = fig.axes
    assert len(left.get_legend().get_texts()) == 3 and len(right.get_lines()) == 2


# -- results: bench and evaluation figures -----------------------------------------------------
def test_evaluation_plots_show_each_policy():
    import matplotlib

    matplotlib.use("Agg")
    recs = [{"evaluation": "ppl", "policy": p, "budget": b, "perplexity": 10.0 + b / 100, "perplexity_after_budget": 9.0}
            for p in ("h2o", "full") for b in (64, 128)]
    ax = viz.plot_ppl(recs).axes[0]  # one passage, no streaming: means
    assert ax.get_ylabel() == "perplexity after budget" and "lower is better" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["h2o"]  # the full cache is not a policy
    assert ax.lines[0].get_ydata().tolist() == [9.0, 9.0]  # one point per budget
    paired = [{"evaluation": "ppl", "policy": p, "budget": b, "passage": f"docs/{i}",
               "perplexity_after_budget": 9.0 + i + (p == "h2o")} for p in ("h2o", "streaming") for b in (64, 128)
              for i in range(3)]
    ax = viz.plot_ppl(paired).axes[0]
    assert "streaming" in ax.get_ylabel() and [t.get_text() for t in ax.get_legend().get_texts()] == ["h2o"]
    pk = [{"evaluation": "passkey", "policy": "h2o", "budget": 64, "length": 200, "depth": 0.5, "accuracy": 0.5},
          {"evaluation": "passkey", "policy": "full", "budget": None, "length": 200, "depth": 0.5, "accuracy": 1.0}]
    ax = viz.plot_passkey(pk).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["h2o", "full"]
    assert [t.get_text() for t in ax.texts] == ["0.50", "1.00"]  # the full cache counts at every budget
    ag = [{"evaluation": "agreement", "policy": "h2o", "budget": 64, "agreement": 0.8}]
    ax = viz.plot_agreement(ag).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["h2o"]
    assert ax.lines[0].get_xdata().tolist() == [64] and ax.lines[0].get_ydata().tolist() == [0.8]
    stream = [{"evaluation": "stream", "policy": "full", "positions": "true", "budget": None, "window_start": w,
               "perplexity": 10.0} for w in (0, 100)]
    stream += [{"evaluation": "stream", "policy": p, "positions": s, "budget": b, "granularity": g, "window_start": w,
                "perplexity": 11.0 + w + (p == "ebbinghaus") * (g == "layer")} for p in ("streaming", "ebbinghaus")
               for s in ("true", "cache")
               for b, g in ((64, "shared"), (64, "layer"), (128, "shared")) for w in (0, 100)]
    fig = viz.plot_stream(stream, context=150)  # one granularity drawn (layer): a panel per position scheme
    assert [ax.get_title() for ax in fig.axes] == ["true positions", "positions inside the cache"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "full cache", "streaming, budget 64", "ebbinghaus, budget 64", "trained context (150)"]
    cache_panel = {line.get_label(): [float(y) for y in line.get_ydata()] for line in fig.axes[1].lines}
    assert cache_panel["ebbinghaus, budget 64"] == [12.0, 112.0]  # the layer records, not the shared ones
    shared = viz.plot_stream(stream, granularity="shared")
    assert "streaming, budget 128" in [t.get_text() for t in shared.legends[0].get_texts()]
    few = viz.plot_stream(stream, context=150, policies=["ebbinghaus"], budgets=[64])  # a lesson's handful of lines
    assert [t.get_text() for t in few.legends[0].get_texts()] == [
        "full cache", "ebbinghaus, budget 64", "trained context (150)"]


def test_plots_are_written_through_save_figure(bench_result, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path))
    paths = save_bench_plots(bench_result.records, prefix="bench_test")
    assert sorted(p.split("/")[-1] for p in paths) == ["bench_test_kv_memory.png", "bench_test_speedup.png",
                                                       "bench_test_tokens_per_second.png"]
    assert all((tmp_path / p.split("/")[-1]).stat().st_size > 1000 for p in paths)


# -- forest: paired differences ----------------------------------------------------------------
def test_plot_forest_rows_and_errors():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memollm.viz import plot_forest

    rows = [{"label": "ppl · B=64", "mean": -0.5, "low": -0.9, "high": -0.1, "n": 8, "marked": True,
             "verdict": "wins", "panel": "Δ perplexity"},
            {"label": "ppl · B=128", "mean": 0.1, "low": float("nan"), "high": float("nan"), "n": 1,
             "panel": "Δ perplexity"},
            {"label": "passkey · B=0.25", "mean": 0.2, "low": -0.1, "high": 0.5, "n": 10, "panel": "Δ accuracy"}]
    fig = plot_forest(rows, title="test")
    assert len([ax for ax in fig.axes if ax.get_xlabel()]) == 2 and fig.get_figwidth() == 8.0
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one row"):
        plot_forest([])
    with pytest.raises(ValueError, match="lacks"):
        plot_forest([{"label": "x", "mean": 0.0}])


def test_plot_forest_colours_verdicts_and_names_the_peer():
    """Colour and marker follow the verdict (wins, ties, loses) with a counting legend; the axis says
    the difference is against the peer named on each row; parts every label shares are said once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from memollm.viz import plot_forest
    from memollm.viz.forest import STYLE

    panel = "Δ perplexity: ebbinghaus − best peer (lower is better)"
    rows = [{"label": f"ppl · layer · B={b} · vs {peer}", "mean": m, "low": m - 0.2, "high": m + 0.2, "n": 8,
             "verdict": v, "marked": v != "ties", "panel": panel}
            for b, peer, m, v in [(64, "snapkv", -0.5, "wins"), (128, "streaming", 0.1, "ties"),
                                  (256, "tova", 0.5, "loses"), (512, "tova", 0.0, "ties")]]
    rows.append({"label": "long stream docs, chunks of 64 · layer · pos true · B=1024 · vs streaming", "mean": 1.0,
                 "low": 0.5, "high": 1.5, "n": 20, "verdict": "loses", "marked": True, "panel": "other"})
    fig = plot_forest(rows, title="t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Δ perplexity: ebbinghaus − its best peer, named on each row (lower is better)"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["ppl · B=64 · vs snapkv", "ppl · B=128 · vs streaming", "ppl · B=256 · vs tova",
                      "ppl · B=512 · vs tova"]  # "layer", on every row, moves under the title
    assert "all rows: layer" in fig._suptitle.get_text()
    long = [t.get_text() for a in fig.axes for t in a.get_yticklabels() if t.get_text().startswith("long")]
    assert long == ["long stream docs, chunks of 64 · pos true ·\nB=1024 · vs streaming"]  # wrapped
    points = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1]  # the means, in row order
    assert [(to_hex(p.get_color()), p.get_marker()) for p in points] == [
        (STYLE[v][0], STYLE[v][1]) for v in ("wins", "ties", "loses", "ties")]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["wins (1)", "loses (2)", "ties (2)"]
    plt.close(fig)
    # a verdict decides the colour even where "marked" is missing; a row without a verdict never looks like one
    fig = plot_forest([{"label": "a · vs x", "mean": -1.0, "low": -2.0, "high": -0.5, "n": 5, "verdict": "wins"},
                       {"label": "b · vs x", "mean": -1.0, "low": -2.0, "high": -0.5, "n": 5, "marked": True}])
    points = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 1]
    assert [to_hex(p.get_color()) for p in points] == [STYLE["wins"][0], STYLE["differs"][0]]
    assert fig.axes[0].get_xlabel() == "difference"  # no "best peer" claimed where the caller made none
    plt.close(fig)


# -- the lessons' heat maps (seaborn's heatmap: a QuadMesh, cell (i, j) over [j, j+1] x [i, i+1]) --

def _mesh(ax):
    from matplotlib.collections import QuadMesh

    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1, ax.collections
    return meshes[0]


def test_retention_by_layer_is_a_heat_map_of_r():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    tw = {"positions": list(range(5, 45)), "retention": {f"layer_{i}": rng.random(40).tolist() for i in range(6)}}
    fig = viz.plot_retention_by_layer(tw)
    heat, bar = fig.axes
    mesh = _mesh(heat)
    assert np.allclose(mesh.get_array().reshape(6, 40), [tw["retention"][f"layer_{i}"] for i in range(6)])
    assert mesh.get_clim() == (0, 1) and mesh.get_cmap().name == "viridis" and bar.get_ylabel() == "retention R"
    assert [t.get_text() for t in heat.get_yticklabels()] == [str(i) for i in range(6)]
    assert heat.get_xticklabels()[0].get_text() == "5"  # true positions, not column indices
    assert heat.get_xlabel() == "true position in the sequence" and heat.get_ylabel() == "memory layer"
    plt.close(fig)


def test_token_strength_colours_each_token_by_log_s():
    import matplotlib.pyplot as plt

    tokens = ["The", " pass", " key", " is", " 4", "8", ".", "\n"]
    log_s = np.log([2.0, 1.0, 3.0, 8.0, 0.5, 0.7, 20.0, 5.0])
    fig = viz.plot_token_strength(tokens, log_s, vmin=np.log(0.5), vmax=np.log(20.0))
    ax, bar = fig.axes
    texts = [t for t in ax.texts]
    assert [t.get_text() for t in texts] == ["The", " pass", " key", " is", " 4", "8", ".", "\\n"]
    lum = [np.dot(t.get_bbox_patch().get_facecolor()[:3], (0.299, 0.587, 0.114)) for t in texts]
    order = np.argsort(log_s)
    assert np.all(np.diff(np.asarray(lum)[order]) > 0)  # magma: a longer-lived token is brighter
    assert bar.get_xlabel() == "S in tokens (log scale)"
    assert [t.get_text() for t in bar.get_xticklabels()][::4] == ["0.5", "20"]  # labelled in S, not log S
    with pytest.raises(ValueError, match="8 tokens but 2 values"):
        viz.plot_token_strength(tokens, [0.0, 1.0])
    plt.close(fig)


def test_masked_raster_draws_masked_matrix_with_unread_cells_blank():
    import matplotlib.pyplot as plt

    events = {3: [5, 6], 8: [10]}
    fig = viz.plot_masked_raster(events, 20, 10)
    (ax,) = fig.axes
    drawn = _mesh(ax).get_array()
    grid = viz.masked_matrix(events, 20, 10)
    assert drawn.shape == grid.shape and np.array_equal(drawn.mask, np.isnan(grid))
    assert np.array_equal(drawn.filled(-1), np.nan_to_num(grid, nan=-1))
    assert ax.get_ylim()[0] < ax.get_ylim()[1]  # position 0 at the bottom
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [20]  # between the prompt and the generated tokens
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"visible", "masked", "not read yet"}
    plt.close(fig)


def test_mask_schematic_draws_mask_grid():
    import matplotlib.pyplot as plt

    forgotten = {7: [5, 6], 10: [4, 8]}
    fig = viz.plot_mask_schematic(12, forgotten, sinks=4, block=4)
    left = fig.axes[0]
    assert np.array_equal(_mesh(left).get_array().reshape(12, 12), viz.mask_grid(12, forgotten, 4))
    assert "3 of 9 tiles" in left.get_title()
    plt.close(fig)
