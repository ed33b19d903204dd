"""The README and docs/ are read where the repository is, without the team's own papers beside it: no
pointer to a file outside the repository, no "SPEC §" a reader cannot open, and every relative link
names a file that is there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# What a benchmark script prints is quoted as printed: its labels are not pointers for a reader.
CODE_BLOCK = re.compile(r"```.*?```", re.S)


def prose(path: Path) -> str:
    return CODE_BLOCK.sub("", path.read_text())


def test_no_document_points_outside_the_repository() -> None:
    for path in DOCUMENTS:
        text = prose(path)
        for outside in ("../shared", "SPEC §", "SPEC.md", "PERF.md", "SECURITY.md", "STYLE.md"):
            assert outside not in text, f"{path.relative_to(REPO)} mentions {outside!r}"


def test_every_relative_link_names_a_file_in_the_repository() -> None:
    for path in DOCUMENTS:
        for target in LINK.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).resolve().exists(), f"{path.relative_to(REPO)} links to {target}"
            assert REPO in (path.parent / target).resolve().parents or (path.parent / target).resolve() == REPO
