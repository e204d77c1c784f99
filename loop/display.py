"""What the foreground daemon shows: one line per finished experiment, and a live line for the
running one (redrawn in place on a terminal, plain lines otherwise)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from loop.screen import PrintableStream, printable
from loop.target import MetricView


class Display:
    def __init__(self, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        # Its own text is escaped here; the \r that redraws the live line must reach the terminal.
        self.stream = stream.underlying if isinstance(stream, PrintableStream) else stream
        self.tty = stream.isatty()
        self._live = False
        self._last_plain = 0.0

    def say(self, text: str) -> None:
        self._clear()
        print(printable(text), file=self.stream, flush=True)

    def finished(self, n: int, status: str, score: float | None, best: float | None, seconds: float, description: str,
                 metric: MetricView = MetricView()) -> None:
        shown = metric.text(score) if score is not None else "-".center(8)
        delta = metric.change(score, best) if score is not None and best is not None else " " * 9
        self.say(f"#{n:04d} {status:<8} {shown} {delta} {seconds:6.0f}s  {description}")

    def live(self, n: int, phase: str, elapsed: float, budget: float, loss: str | None) -> None:
        text = printable(f"#{n:04d} {phase:<10} {elapsed:5.0f}s of {budget:.0f}s" + (f"  loss {loss}" if loss else ""))
        if self.tty:
            self.stream.write("\r" + text.ljust(78)[:78])
            self.stream.flush()
            self._live = True
        elif time.monotonic() - self._last_plain > 60:  # a log file gets a heartbeat, not a flood
            self._last_plain = time.monotonic()
            print(text, file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._live:
            self.stream.write("\r" + " " * 78 + "\r")
            self._live = False
