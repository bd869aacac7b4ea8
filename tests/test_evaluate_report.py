"""memollm.evaluate.report and `memollm eval report` on small synthetic records: verdicts, README
markers, identical reruns."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from memollm.cli import main as cli_main


@pytest.fixture(scope="module")
def report():
    """The command, as ``report.main(argv)``."""
    return SimpleNamespace(main=lambda argv: cli_main(["eval", "report", *argv]))


def _ppl(budget: int = 64) -> list[dict]:
    """ebbinghaus 2 points better than tova on every passage at budget 64; at 128 every policy is identical."""
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(15, 40, 6)
    out = []
    for b in (64, 128):
        for policy, shift in (("full", -3.0), ("ebbinghaus", -2.0), ("tova", 0.0), ("streaming", 1.0)):
            noise = rng.normal(0, 0.1, 6) if b == 64 and policy not in ("full", "tova") else np.zeros(6)
            for i, d in enumerate(difficulty):
                value = d + (shift if b == 64 else 0.0) + noise[i]
                out.append({"evaluation": "ppl", "policy": policy, "granularity": None if policy == "full" else "layer",
                            "budget": b, "passage": f"docs/{i}", "perplexity_after_budget": round(float(value), 4),
                            "split": "report", "chunk": 1})
    return out


def _retrieval() -> list[dict]:
    """12 documents, the full cache answers 10; on those ebbinghaus is right on all and streaming on none."""
    out = []
    for doc in range(12):
        full_ok = int(doc < 10)
        for policy, correct in (("full", full_ok), ("ebbinghaus", full_ok), ("streaming", 0)):
            out.append({"evaluation": "retrieval", "task": "passkey", "policy": policy,
                        "granularity": None if policy == "full" else "layer",
                        "budget": None if policy == "full" else 300 + doc,
                        "budget_fraction": None if policy == "full" else 0.25, "document": f"doc{doc}",
                        "case": 0, "split": "report", "correct": correct, "full_correct": full_ok})
    return out


def _write(folder: Path, retrieval: bool = True) -> None:
    (folder / "eval_ppl.json").write_text(json.dumps(_ppl()))
    if retrieval:
        (folder / "eval_retrieval.json").write_text(json.dumps(_retrieval()))


def _row(md: str, heading: str, policy: str) -> list[str]:
    section = md.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith(f"| {policy} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_verdicts_protocol_and_identical_reruns(report, tmp_path):
    _write(tmp_path)
    assert report.main(["--figures", str(tmp_path)]) == 0
    md = (tmp_path / "quality_report.md").read_text()
    png = (tmp_path / "quality_forest.png").read_bytes()
    assert png.startswith(b"\x89PNG") and b"Software" not in png
    win = _row(md, "perplexity · granularity layer · budget 64 tokens", "**ebbinghaus**")
    assert win[3] == "tova" and win[4].startswith("-2.") and win[-1] == "wins"
    tie = _row(md, "perplexity · granularity layer · budget 128 tokens", "**ebbinghaus**")
    assert tie[4] == "0.000 [0.000, 0.000]" and tie[-2] == "1.000" and tie[-1] == "ties"
    assert _row(md, "perplexity · granularity layer · budget 64 tokens", "streaming")[-1] == "loses"
    assert "Protocol: split report; chunk 1; granularity layer; budget 64 tokens (measured: 64, 128); " \
           "6 passages paired by passage." in md
    passkey = "passkey · granularity layer · budget 0.25 of the document"
    assert _row(md, passkey, "**ebbinghaus**")[1:3] == ["1.000", "10"]  # the 2 unanswered documents left out
    assert _row(md, passkey, "**ebbinghaus**")[-1] == "wins"
    assert _row(md, passkey, "full (all documents)")[1:3] == ["0.833", "12"]
    assert "the 10 of 12 documents the full cache answered" in md and "300–311 tokens" in md
    assert "### stream" not in md  # no stream records: no stream table
    assert report.main(["--figures", str(tmp_path)]) == 0  # a rerun gives the same bytes
    assert (tmp_path / "quality_report.md").read_text() == md
    assert (tmp_path / "quality_forest.png").read_bytes() == png


def test_peers_and_policy_are_configurable(report, tmp_path):
    _write(tmp_path, retrieval=False)
    report.main(["--figures", str(tmp_path), "--policy", "tova", "--peers", "streaming"])
    md = (tmp_path / "quality_report.md").read_text()
    row = _row(md, "perplexity · granularity layer · budget 64 tokens", "**tova**")
    assert row[3] == "streaming" and row[-1] == "wins"
    # ebbinghaus is not a peer here: compared with streaming only
    assert _row(md, "perplexity · granularity layer · budget 64 tokens", "ebbinghaus")[3] == "streaming"


def test_readme_markers(report, tmp_path, capsys):
    _write(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n<!-- quality-report:begin -->\nold text\n<!-- quality-report:end -->\nafter\n")
    report.main(["--figures", str(tmp_path / "."), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n<!-- quality-report:begin -->\nGenerated by")
    assert text.endswith("<!-- quality-report:end -->\nafter\n") and "old text" not in text
    assert "](quality_forest.png)" in text and "### perplexity" in text
    report.main(["--figures", str(tmp_path), "--readme", str(readme)])
    assert readme.read_text() == text  # replacing again changes nothing
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# No markers here\n")
    capsys.readouterr()
    report.main(["--figures", str(tmp_path), "--readme", str(plain)])
    assert plain.read_text() == "# No markers here\n"
    assert "markers" in capsys.readouterr().out


def test_no_records_at_all(report, tmp_path):
    assert report.main(["--figures", str(tmp_path)]) == 0
    assert "No evaluation records were found." in (tmp_path / "quality_report.md").read_text()
    assert not (tmp_path / "quality_forest.png").exists()
