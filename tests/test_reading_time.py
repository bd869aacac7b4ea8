"""How long the book takes to read, and that 00's map says so.

The estimate: the words a reader reads (markdown, link addresses left out, and the stored text
outputs of the code cells) at 200 words a minute, plus one minute for every figure. Code is run
rather than read word by word, so it does not count; the glossary is a page to look words up in,
not a chapter, so it does not count either. ``python tests/test_reading_time.py`` prints the table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
START = REPO / "notebooks" / "00_start_here.ipynb"
WORDS_PER_MINUTE = 200
BOOK_MINUTES = 120


def _words(text: str) -> int:
    return len(re.sub(r"\]\([^)\s]*\)", "]", text).split())


def reading_minutes(path: Path) -> float:
    """Words / 200 plus a minute per figure, for one notebook with its stored outputs."""
    words, figures = 0, 0
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            words += _words("".join(cell["source"]))
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                figures += 1
            elif "text" in output:
                words += _words("".join(output["text"]))
            elif "text/markdown" in data:
                words += _words("".join(data["text/markdown"]))
            elif "text/plain" in data:
                words += _words("".join(data["text/plain"]))
    return words / WORDS_PER_MINUTE + figures


def stated_minutes() -> dict[str, int]:
    """``{notebook file name: minutes}`` as 00's map of the chapters states them ("about N min")."""
    text = "\n".join("".join(c["source"]) for c in json.loads(START.read_text(encoding="utf-8"))["cells"]
                     if c["cell_type"] == "markdown")
    found = {}
    for line in re.split(r"\n\s*\n|\n(?=\s*\d+\.\s|\s*\*\s|\|)", text):
        names = re.findall(r"notebooks/(\d\d_[\w]+\.ipynb)", line)
        minutes = re.search(r"(\d+) min\b", line)
        if len(set(names)) == 1 and minutes:
            found[names[0]] = int(minutes.group(1))
    return found


def test_each_chapter_has_a_reading_time():
    for path in CHAPTERS:
        assert reading_minutes(path) > 1, path.name


def test_the_map_states_each_reading_time():
    """00's map gives every chapter's reading time, within two minutes of the estimate."""
    stated = stated_minutes()
    for path in CHAPTERS:
        if path == START:
            continue
        assert path.name in stated, f"00's map gives no reading time for {path.name}"
        estimate = reading_minutes(path)
        assert abs(stated[path.name] - estimate) <= 2, (
            f"00 says {path.name} takes {stated[path.name]} min; the estimate is {estimate:.1f}")


def test_the_book_reads_in_two_hours():
    total = sum(reading_minutes(p) for p in CHAPTERS)
    table = "\n".join(f"  {p.name}: {reading_minutes(p):.1f} min" for p in CHAPTERS)
    assert total < BOOK_MINUTES, f"the book takes {total:.0f} min to read, over {BOOK_MINUTES}:\n{table}"


if __name__ == "__main__":
    total = 0.0
    for path in CHAPTERS:
        minutes = reading_minutes(path)
        total += minutes
        print(f"{path.name:34s} {minutes:5.1f} min")
    print(f"{'the book':34s} {total:5.1f} min")
    pytest.main([__file__, "-q"])
