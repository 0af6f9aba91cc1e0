"""Stopping a run on SIGINT/SIGTERM: the first stops it at the next safe point, the second exits now."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: `stop_reason` of a run stopped by a first Ctrl-C or SIGTERM (a resumable stop, not an end).
SIGNAL_REASONS = frozenset(sig.name for sig in EXIT_CODES)


class Interrupted(Exception):
    """Stopped by a signal at a safe point; the run directory holds a resumable checkpoint."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = EXIT_CODES.get(signal.Signals(signum), 1)
        self.run_dir = run_dir


class SignalStop:
    """First SIGINT/SIGTERM: stop at the next safe point. Second: exit now (checkpoints are atomic)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            os._exit(EXIT_CODES.get(signal.Signals(signum), 1))
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: stopping after this generation (again to quit now)",
            flush=True,
        )

    def check(self, out: Path) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, out)
