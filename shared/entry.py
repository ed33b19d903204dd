"""The `handshake` command's entry point, kept free of imports: Ctrl-C while the platform's modules
load (a second or two on a slow machine) is then one line too, not a traceback through them.

Ctrl-C while they load ends the process at once from its handler (nothing has started yet that would
need undoing). Python's own Ctrl-C raises KeyboardInterrupt wherever the main thread is, and where that
was a weakref callback of the import machinery, it was printed as "Exception ignored" and lost: the
start-up went on and `serve` ran as if no signal had come (seen once in a full test run). SIGTERM keeps
its default action meanwhile: the process ends by the signal, as init systems expect."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


def _interrupted(sig: int, frame: FrameType | None) -> None:
    print("handshake: interrupted", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        from shared.cli import main as run
    except KeyboardInterrupt:  # one that came before the handler above was in place
        print("handshake: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    run()
