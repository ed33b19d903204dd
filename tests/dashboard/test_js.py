"""The dashboard's JavaScript under node's own test runner (tests/dashboard/js/*.test.mjs): the pure parts of
its modules (formatting, the pager's arithmetic, the chart's scale, the event stream's frames, how an event
is told) and that every module links. Run from here because CI runs pytest only. No node: skipped with the
reason, except in CI (CI=true), where it fails."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from account_manager.routes.dashboard import MODULES, STATIC_TYPES
from tests.conftest import IN_CI

JS_TESTS = Path(__file__).parent / "js"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        if IN_CI:
            pytest.fail("node is missing (CI=true: a missing runtime is a failure)")
        pytest.skip("node is missing: the dashboard's JavaScript tests need Node.js 18 or later")
    return found


def test_the_dashboards_javascript_passes_its_node_tests() -> None:
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, f"no JavaScript tests in {JS_TESTS}"
    result = subprocess.run([node(), "--test", *files], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"node --test failed:\n{result.stdout}\n{result.stderr}"


def test_every_module_of_the_dashboard_is_served_as_javascript() -> None:
    """A module left out of the served list would be a 404 to the browser, and the page would not start."""
    dashboard = resources.files("account_manager.dashboard")
    shipped = {path.name for path in dashboard.iterdir() if path.name.endswith(".js")}
    assert shipped == set(MODULES)
    assert all(STATIC_TYPES[name] == "text/javascript; charset=utf-8" for name in MODULES)
