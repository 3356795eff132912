"""The API reference builds from the docstrings with no warning (docs/reference, Sphinx with
autodoc and napoleon), so a docstring Sphinx cannot read fails here and not on a reader's screen;
every relative link in the markdown pages, and every ``docs/...`` page or figure that code names,
points to a file that exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
PAGES = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    + [p for p in (ROOT / "docs").rglob("*.md") if "build" not in p.relative_to(ROOT).parts]
)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.slow
def test_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",  # every warning is an error ...
            "--keep-going",  # ... and all of them are reported, not only the first
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(REFERENCE),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    warnings = [line for line in out.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert out.returncode == 0 and not warnings, "\n".join(warnings) or out.stderr[-3000:]
    assert (tmp_path / "html" / "modules" / "bt_laplace.fit.html").is_file()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    """Links such as ``[gotchas.md](../guides/gotchas.md)`` name files that exist."""
    text = page.read_text()
    missing = [
        target
        for target in LINK.findall(text)
        if "://" not in target
        and not target.startswith("mailto:")
        and not (page.parent / target).exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


#: pages and figures named in code (not docs/data/*.json: a results file may come with a later run)
MENTIONED = re.compile(r"\bdocs/[\w/]+\.(?:md|png)\b")
SOURCES = sorted(
    p
    for folder in ("src", "benchmarks", "examples", "tests")
    for p in (ROOT / folder).rglob("*")
    if p.suffix in {".py", ".ipynb", ".sh"}
)


def test_docs_paths_named_in_code_exist():
    """A docstring, comment or default that names ``docs/<page>.md`` (or a figure) names a file
    that exists, so a page that moves cannot leave its old path behind."""
    missing = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in SOURCES
        for name in set(MENTIONED.findall(path.read_text(errors="replace")))
        if not (ROOT / name).exists()
    )
    assert not missing, "\n".join(missing)
