"""The `handshake` command's entry point, kept free of imports: Ctrl-C while the platform's modules
load (a second or two on a slow machine) is then one line too, not a traceback through them.

While they load, SIGINT and SIGTERM are only noted, and acted on once the import is done. Python's own
Ctrl-C raises KeyboardInterrupt wherever the main thread is, and where that is a weakref callback of the
import machinery it is printed as "Exception ignored" and lost: the start-up then went on, and `serve`
ran as if no signal had come (seen once in a full test run)."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main() -> None:
    received: list[int] = []

    def note(sig: int, frame: FrameType | None) -> None:
        received.append(sig)

    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    try:
        from shared.cli import main as run
    except KeyboardInterrupt:  # one that came before the handlers above were in place
        received.append(signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        _end(received[0])
    run()


def _end(sig: int) -> None:
    """End the way the signal asks: after Ctrl-C one line and 130, after SIGTERM by the signal itself."""
    if sig == signal.SIGINT:
        print("handshake: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    sys.stderr.flush()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
