"""Workspace text on the host's terminal, made harmless.

A workspace is untrusted: a file name, a file's content, a process's command line or a
service's output can hold escape sequences that a terminal would obey (move the cursor,
rewrite what is shown, set the title, answer a query into the user's keyboard input). When
pyro writes such text to a terminal it shows every control character instead, as `cat -v`
does: C0 controls and DEL in caret notation (ESC is `^[`, a lone CR `^M`), C1 controls and
bytes that are not UTF-8 as `\\xNN`, and the bidirectional overrides that reorder what a
line seems to say as `\\uNNNN`. Newlines and tabs stay. Piped or `--json` output is never
touched: there the bytes stay exact.

A program's output (a service's log, a shell's screen) keeps its colours and carriage
returns (`program=True`): SGR sequences only change how text looks, and progress bars
redraw with CR. Everything else in it is shown as above.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from typing import TextIO

_SGR = r"\x1b\[[0-9;:]*m"
# Compiled on first use (re keeps them): most commands never write workspace text.
_UNSAFE = (
    _SGR
    + r"|\r(?!\n)"  # a CR that does not end a line returns over what is shown
    + "|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\udc80-\udcff]"
)
# The end of a piece of output that may be the start of something the next piece completes.
_UNFINISHED = r"(\x1b(\[[0-9;:]*)?|\r)\Z"
_MAX_HELD = 64  # a longer "unfinished" SGR is not one: show it


def visible(text: str, *, program: bool = False) -> str:
    """`text` with every control character shown (see the module's doc)."""
    return re.sub(_UNSAFE, lambda m: _shown(m.group(), program), text)


def _shown(found: str, program: bool) -> str:
    if len(found) > 1:  # an SGR sequence
        return found if program else "^[" + found[1:]
    if found == "\r":
        return found if program else "^M"
    code = ord(found)
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    if code <= 0x9F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def is_terminal(stream: TextIO) -> bool:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return stream.isatty()
    return False


def for_stream(text: str, stream: TextIO, *, program: bool = False) -> str:
    """`text` made visible if `stream` is a terminal, else exactly as it is."""
    return visible(text, program=program) if is_terminal(stream) else text


class TerminalText:
    """`visible` for output that arrives in pieces (a log followed, a file read): a UTF-8
    character, an escape sequence or a CR+LF split between two pieces is judged whole."""

    def __init__(self, *, program: bool = False) -> None:
        self.program = program
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._held = ""

    def feed(self, data: bytes) -> str:
        text = self._held + self._decoder.decode(data)
        found = re.search(_UNFINISHED, text)
        cut = found.start() if found is not None and len(text) - found.start() < _MAX_HELD else None
        text, self._held = (text, "") if cut is None else (text[:cut], text[cut:])
        return visible(text, program=self.program)

    def flush(self) -> str:
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return visible(text, program=self.program)
