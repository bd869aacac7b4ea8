"""Reader-facing text speaks of the library and its measurements, not of how the project is run.

Scanned: every notebook's markdown and code comments, ``notebooks/solutions/*``,
``notebooks/GLOSSARY.md`` and README.md. Forbidden: the words of the project's bookkeeping
("issue", "CI" for continuous integration, "nbval", "commit") and phrases that quote a plan
instead of stating a result. A code cell shows no test marker (``# NBVAL_...``: the cell tags
``nbval-ignore-output`` and ``nbval-skip`` say the same out of the reader's sight), and no stored
output prints a temporary path (``/tmp/...``, ``tmpXXXX``): it would be the machine's, not the reader's.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

FORBIDDEN = [
    ("issue", re.compile(r"\bissues?\b", re.I)),
    # "CI" as in continuous integration; "95% CI" (a confidence interval) is statistics, not bookkeeping.
    ("CI", re.compile(r"(?<!% )\bCI\b", re.I)),
    ("nbval", re.compile(r"nbval", re.I)),
    ("commit", re.compile(r"\bcommit(s|ted|ting)?\b", re.I)),
    ("the target set for this benchmark", re.compile(r"the target set for this benchmark", re.I)),
    ("the project's target", re.compile(r"the project's targets?", re.I)),
    ("what the issue asked", re.compile(r"what the issue asked", re.I)),
]
MARKER = re.compile(r"NBVAL", re.I)
TEMPORARY = re.compile(r"(/tmp/|/var/folders/|\\Temp\\|\btmp[A-Za-z0-9_]{4,}\b|memollm-(figures|wheel)\.)")


def _comments(code: str) -> list[tuple[int, str]]:
    """``(line number, comment)`` of a code cell; IPython magics are blanked first."""
    lines = [("" if line.lstrip().startswith(("%", "!")) else line) for line in code.splitlines()]
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):  # not Python: scan every line
        return [(i, line) for i, line in enumerate(lines, 1) if "#" in line]
    return [(tok.start[0], tok.string) for tok in tokens if tok.type == tokenize.COMMENT]


def _notebook_text(path: Path) -> list[tuple[str, str]]:
    """``(where, text)`` for the markdown lines and code comments of a notebook."""
    found = []
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            found += [(f"cell {index}, line {n}", line) for n, line in enumerate(source.splitlines(), 1)]
        elif cell["cell_type"] == "code":
            found += [(f"cell {index}, line {n}", comment) for n, comment in _comments(source)]
    return found


def _notebook_sight(path: Path) -> list[str]:
    """What a code cell shows that belongs to the test harness or to the machine that ran it: a
    marker line in its source, a temporary path in its stored output."""
    problems = []
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] != "code":
            continue
        for n, line in enumerate("".join(cell["source"]).splitlines(), 1):
            if MARKER.search(line):
                problems.append(f"cell {index}, line {n}: a visible marker {line.strip()!r} (use the cell's tags)")
        for output in cell.get("outputs", []):
            texts = [output.get("text", "")] + [output.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown")]
            for text in texts:
                match = TEMPORARY.search("".join(text))
                if match:
                    problems.append(f"cell {index}: a temporary path in the stored output ({match.group(0)!r})")
    return problems


def _text_file(path: Path) -> list[tuple[str, str]]:
    return [(f"line {n}", line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]


def _sources() -> list[Path]:
    notebooks = REPO / "notebooks"
    return (sorted(notebooks.glob("*.ipynb")) + sorted((notebooks / "solutions").glob("*"))
            + sorted(notebooks.glob("*.md")) + [REPO / "README.md"])


def _problems(path: Path) -> list[str]:
    lines = _notebook_text(path) if path.suffix == ".ipynb" else _text_file(path)
    problems = _notebook_sight(path) if path.suffix == ".ipynb" else []
    for where, text in lines:
        for word, pattern in FORBIDDEN:
            if pattern.search(text):
                problems.append(f"{where}: {word!r} in {text.strip()[:160]!r}")
    return problems


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_bookkeeping_words(path):
    problems = _problems(path)
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_the_scan_finds_what_it_should(tmp_path):
    """The patterns themselves: a bookkeeping word, a visible marker and a temporary path are found;
    statistics, words in strings and tagged cells are not."""
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["Runs in CI.\n", "Mean [95% CI] is fine.\n", "Specifics.\n"]},
        {"cell_type": "code", "metadata": {"tags": ["nbval-ignore-output"]},
         "source": ["x = 'an issue in a string'  # fine\n"], "outputs": [{"text": "saved to ../figures\n"}]},
        {"cell_type": "code", "source": ["y = 1  # see the issue\n", "# NBVAL_SKIP\n"]},
        {"cell_type": "markdown", "source": ["The committed run.\n"]},
        {"cell_type": "code", "source": ["# NBVAL_IGNORE_OUTPUT\n", "print(path)\n"],
         "outputs": [{"output_type": "stream", "text": "figures: /tmp/memollm-figures.ab12cd\n"}]},
        {"cell_type": "code", "source": ["print(path)\n"],
         "outputs": [{"data": {"text/plain": "PosixPath('/home/me/tmpk2x9_q1/fig.png')"}}]},
    ]}
    path = tmp_path / "probe.ipynb"
    path.write_text(json.dumps(nb))
    problems = _problems(path)
    assert [p.split(":")[0] for p in problems] == ["cell 2, line 2", "cell 4, line 1", "cell 4", "cell 5",
                                                   "cell 0, line 1", "cell 2, line 1", "cell 2, line 2",
                                                   "cell 3, line 1", "cell 4, line 1"], problems
