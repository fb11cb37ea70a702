"""One way to make text safe for a log line: names, hosts and errors can carry bytes chosen by a
hostile peer or program (NUL, ESC, CR/LF), which would otherwise forge lines or drive the
terminal. Every sink that writes a log line passes it through `printable`."""
from __future__ import annotations


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:          # an undecodable byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every non-printable character written as a \\xNN / \\uNNNN escape; printable
    text is returned unchanged. keep_newlines: for our own multi-line messages (usage text), never for peer data."""
    if text.isprintable():
        return text
    lines = text.split("\n") if keep_newlines else [text]
    return "\n".join("".join(c if c.isprintable() else _escape(c) for c in line)
                     for line in lines)
