"""SIGINT (Ctrl-C) and SIGTERM while `handshake serve` starts (migrating, loading keys, starting the
broker) or serves. What is starting is cancelled at once and its clean-up runs; the command then ends
the documented way, never with a traceback: after Ctrl-C the one line `handshake: interrupted` and exit
code 130, after SIGTERM no line and an end by the signal itself (status 143 in a shell), as init
systems and container runtimes expect. While uvicorn serves it takes both signals over for its graceful
shutdown, and hands them back here when it is done."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from types import FrameType, TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_INTERRUPTED = 130
# A stop that has not ended this long after its signal is stuck: every step of the shutdown has its
# own bound (uvicorn's 5 s, the broker's 5 s, the journal's drain), so this is a fault of ours. The
# process then writes every thread's stack to stderr and ends the way the signal asked anyway: a stop
# must end (SPEC §11), and an init system should not have to escalate to SIGKILL.
STOP_DEADLINE = 20.0


def dump_tasks(loop: asyncio.AbstractEventLoop, written: threading.Event | None = None) -> None:
    """Every asyncio task of `loop` and where it waits, on stderr (run on the loop's own thread)."""
    try:
        for task in asyncio.all_tasks(loop):
            print(f"--- {task!r}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()
    finally:
        if written is not None:
            written.set()


class Interrupted(Exception):  # noqa: N818 - a stop asked for, not a failure (like KeyboardInterrupt)
    """A stop signal came while the command was starting: what had started has been undone."""


class StopSignals:
    """Holds SIGINT and SIGTERM for the life of `serve`. A step run through `starting` is cancelled
    when one comes; one that came between steps stops the next `run` or `starting` before it begins."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelled = False  # once: the clean-up that follows the cancellation must run to its end
        self._previous_excepthook = threading.excepthook

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._previous_excepthook = threading.excepthook
        threading.excepthook = self._thread_failed
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.received is None:  # after a stop the process ends: a thread's late reply may come at its exit
            threading.excepthook = self._previous_excepthook

    def _thread_failed(self, args: threading.ExceptHookArgs) -> None:
        """A database connection's thread (aiosqlite runs one per connection) that finishes a statement
        whose caller a stop signal cancelled hands the result to an event loop that may be closed by
        then: nobody waits for it any more, so that is no fault to report. Anything else as before."""
        if (
            self.received is not None
            and isinstance(args.exc_value, RuntimeError)
            and str(args.exc_value) == "Event loop is closed"
        ):
            return
        self._previous_excepthook(args)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        # A Python signal handler runs between two bytecodes of the main thread, the event loop's:
        # the cancellation is handed to the loop rather than done in the middle of whatever runs.
        if self.received is None:
            overdue = threading.Timer(STOP_DEADLINE, self._overdue, args=(sig, self._loop))
            overdue.daemon = True
            overdue.start()
        self.received = self.received or sig
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._cancel_starting)

    def _overdue(self, sig: int, loop: asyncio.AbstractEventLoop | None) -> None:
        """In a thread of its own, STOP_DEADLINE after the signal, if the process is still here."""
        print(f"handshake: still stopping {STOP_DEADLINE:.0f} s after the signal; ending now. Stacks:", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        loop = self._loop or loop
        if loop is not None and loop.is_running():  # an event loop waiting for ever: its tasks say on what
            written = threading.Event()
            loop.call_soon_threadsafe(dump_tasks, loop, written)
            written.wait(2)
        sys.stderr.flush()
        if sig == signal.SIGINT:
            print("handshake: interrupted", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        # Not the signal's own end (only the main thread may restore its default action): the status a
        # shell shows for it, 128 + the signal's number.
        os._exit(128 + sig)

    def _cancel_starting(self) -> None:
        if self._task is not None and not self._cancelled:
            self._cancelled = True
            self._task.cancel()

    async def starting(self, step: Coroutine[Any, Any, T]) -> T:
        """Await one start-up step; a stop signal cancels it (its clean-up runs) and raises Interrupted.
        Only start-up work goes through here: a clean-up awaited outside it is never cut short."""
        if self.received is not None:
            step.close()
            raise Interrupted
        self._task, self._loop = asyncio.current_task(), asyncio.get_running_loop()
        try:
            return await step
        except asyncio.CancelledError:
            if self.received is None:
                raise
            raise Interrupted from None
        finally:
            self._task = None

    def run(
        self, main: Coroutine[Any, Any, T], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    ) -> T:
        """asyncio.run, without its own Ctrl-C handling (it would raise KeyboardInterrupt from wherever
        the loop was): the handlers above stay in charge."""
        if self.received is not None:
            main.close()
            raise Interrupted
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            try:
                return runner.run(main)
            finally:
                self._loop = None

    def exit(self) -> None:
        """End the command the way the signal that came asks (nothing, if none came)."""
        if self.received == signal.SIGINT:
            print("handshake: interrupted", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INTERRUPTED)
        if self.received is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(self.received, signal.SIG_DFL)
            os.kill(os.getpid(), self.received)
