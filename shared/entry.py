"""The `handshake` command's entry point, kept free of imports: Ctrl-C while the platform's modules
load (a second or two on a slow machine) is then one line too, not a traceback through them."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from shared.cli import main as run
    except KeyboardInterrupt:
        print("handshake: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    run()
