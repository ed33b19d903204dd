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


COMMON = {"/healthz", "/readyz", "/metrics", "/.well-known/jwks.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_the_readme_lists_every_route_of_each_service(tmp_path: Path) -> None:
    """The separate-services table cannot fall behind the code: each service's routes are in its row."""
    from fastapi.routing import APIRoute

    from shared.app import create_app
    from shared.settings import Settings

    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `([a-z-]+)` \| (.+) \|$", (REPO / "README.md").read_text(), re.M)
    }
    for service in ("account-manager", "device-manager", "device-connector"):
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / service}.db", keys_dir=tmp_path / "keys")
        app = create_app(settings, services=[service])
        paths = {route.path for route in app.routes if isinstance(route, APIRoute)} - COMMON
        row = rows.get(service, "")
        rabbit = re.search(r"/v1/mqtt/rabbitmq/\{([a-z,]+)\}", row)
        named = set(re.findall(r"`(/[^`]*)`", row)) | {
            f"/v1/mqtt/rabbitmq/{part}" for part in (rabbit.group(1).split(",") if rabbit else [])
        }
        if "/admin" in paths:
            named |= {"/admin", "/admin/static/{name}"}  # "the dashboard at /admin"
        assert paths <= named, f"{service}: not in the README's table: {sorted(paths - named)}"
