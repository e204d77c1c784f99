"""Text from runs and agents made safe to print. A run's crash reason, summary and log, or an
agent's description, can carry terminal control sequences that would clear the screen, retitle
the window or forge a line of the overnight log; printed, every control character but newline and
tab shows as its escape instead (\\x1b, \\x9b)."""
from __future__ import annotations

import re
from typing import Any, TextIO

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class PrintableStream:
    """A text stream whose writes go through `printable`: what the commands print to a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable(text))

    @property
    def underlying(self) -> TextIO:
        """The stream itself, for a writer that escapes what it prints and draws with \\r."""
        return self._stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
