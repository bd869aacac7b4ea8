"""The package root (memollm/__init__.py): its version is pyproject's, written in one place."""

from __future__ import annotations


def test_version_is_written_once_in_pyproject():
    import re
    from pathlib import Path

    import memollm

    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert memollm.__version__ == re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert "__version__ = \"" not in (Path(memollm.__file__).read_text())
