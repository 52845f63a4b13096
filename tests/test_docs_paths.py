"""Every path to a doc page, figure or data file and every test file cited in the package,
benchmarks, docs, README, examples and tests exists (relative to the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
SCANNED = ["fftbp", "benchmarks", "docs", "README.md", "examples", "tests"]
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints"}
BINARY = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".pyc", ".so", ".npz", ".npy", ".pt"}

# a path starts the word: "mydocs/..." or "fftbp_tests/..." cite something else; a match stops
# at the extension, so "::test_name", an "#anchor" and trailing punctuation are not part of it
_START = r"(?<![\w.-])"
PATTERNS = [
    re.compile(_START + r"docs/[\w./-]+\.(?:md|png|csv|json|txt)\b"),
    re.compile(_START + r"tests/[\w/]+\.py\b"),
]


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        top = ROOT / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in candidates:
            rel = path.relative_to(ROOT)
            if (
                path.is_file()
                and path.suffix.lower() not in BINARY
                and not SKIPPED_DIRS.intersection(rel.parts)
                and path != SELF  # its examples of citations are not citations
            ):
                files.append(path)
    return files


def cited_paths(text: str) -> set[str]:
    found = set()
    for pattern in PATTERNS:
        for m in pattern.finditer(text):
            found.add(m.group(0).rstrip(".,;:"))
    return found


def citations() -> dict[str, list[str]]:
    """cited path -> files citing it"""
    cites: dict[str, list[str]] = {}
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for cited in cited_paths(text):
            cites.setdefault(cited, []).append(str(path.relative_to(ROOT)))
    return cites


def test_the_pattern_finds_what_it_should():
    text = (
        "see docs/algebra.md, docs/fig/a-b.png. and (tests/test_x.py::test_y) or "
        "`tests/sub/t.py`; not mydocs/x.md, fftbp_tests/x.py, docs/, tests/test_*.py"
    )
    assert cited_paths(text) == {
        "docs/algebra.md",
        "docs/fig/a-b.png",
        "tests/test_x.py",
        "tests/sub/t.py",
    }


def test_scan_covers_the_tree():
    files = {str(p.relative_to(ROOT)) for p in scanned_files()}
    assert "README.md" in files and "tests/conftest.py" in files
    assert any(f.startswith("fftbp/") for f in files)
    assert any(f.startswith("docs/") for f in files)


def test_cited_paths_exist():
    missing = {
        cited: where for cited, where in sorted(citations().items()) if not (ROOT / cited).exists()
    }
    if missing:
        lines = [
            f"{cited}  (cited in {', '.join(sorted(where))})" for cited, where in missing.items()
        ]
        pytest.fail("cited paths that do not exist:\n" + "\n".join(lines))


def test_every_test_named_in_the_torch_feature_table_exists():
    """docs/torch.md's workflow table names the test behind each row; each one exists."""
    text = (ROOT / "docs" / "torch.md").read_text()
    table = text.split("## PyTorch workflows: status", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and "test_" in r]
    assert len(rows) >= 15
    sources = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for row in rows:
        cell = re.sub(r"\w+\.py::", "", row.rsplit("|", 2)[1])  # file prefixes
        names = re.findall(r"test_\w+", cell)
        assert names, row
        for name in names:
            assert f"def {name}(" in sources, name
