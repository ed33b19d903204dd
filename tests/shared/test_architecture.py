"""The package boundaries of SPEC §1, checked by import-linter (contracts in pyproject.toml
[tool.importlinter]): the services never import each other, and shared imports no service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"import-linter is not installed next to {sys.executable}"
    result = subprocess.run(
        [str(lint_imports)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"lint-imports exited {result.returncode}\n{result.stdout}\n{result.stderr}"
