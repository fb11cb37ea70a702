"""Secrets (--authkey, --socks5-auth) kept out of the process list.

Every local user can read every process's /proc/PID/cmdline, so a key on argv is public for the
whole run. Two ways around it:

- `file:PATH` and `-` (a line from stdin) name the secret instead of carrying it, as the
  Tailscale CLI's --auth-key does. They parse to a `SecretRef`, read after option parsing.
- A secret given literally is moved off argv at once: tailproxy re-executes itself without it and
  hands the value over through an inherited pipe. Why re-exec: CPython cannot overwrite its own
  argv memory, and the kernel keeps showing it. Why a pipe and not an environment variable: the
  pipe's contents appear nowhere under /proc (environ keeps the value even after unsetenv), and
  the pipe is read empty and closed before anything else runs. The literal stays visible only
  for the few milliseconds before the re-exec; README says to prefer `file:` or `-`.
"""
from __future__ import annotations

import os
import sys

# Names for annotations only (never evaluated: `from __future__ import annotations`). No
# `typing`, `collections.abc` or `dataclasses` here: this module is on an attaching run's way
# to its program's exec (issue 16: <= 50 ms), and those imports alone cost ~half of it.
Any = Callable = object

HANDOVER_ENV = "_TAILPROXY_SECRETS_FD"   # the fd number of the pipe, never the secret
_MAX_SECRET = 4096


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and (value == "-" or value.startswith("file:"))


class SecretRef:
    """`file:PATH` or `-`, read by `read()` and checked by `parse` once options are parsed."""
    source: str
    parse: Callable[[Any], Any]
    __slots__ = ("source", "parse")

    def __init__(self, source: str, parse: Callable[[Any], Any]):
        self.source, self.parse = source, parse

    def __eq__(self, other: object) -> bool:
        return type(other) is SecretRef and (self.source, self.parse) == (other.source,
                                                                            other.parse)

    def __repr__(self) -> str:
        return f"SecretRef({self.source!r})"

    def read(self) -> Any:
        text = _read_stdin_line() if self.source == "-" else _read_file(self.source[5:])
        text = text.strip()
        if not text:
            where = "stdin" if self.source == "-" else self.source[5:]
            raise ValueError(f"{where} holds no secret")
        return self.parse(text)


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(_MAX_SECRET + 1)[:_MAX_SECRET]
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def _read_stdin_line() -> str:
    """One line from fd 0, a byte at a time: a buffered read could swallow input that belongs
    to the program tailproxy runs next."""
    out = bytearray()
    while len(out) < _MAX_SECRET:
        b = os.read(0, 1)
        if not b or b == b"\n":
            break
        out += b
    return out.decode("utf-8", "replace")


def secret(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A setting's parser that also accepts `file:PATH` and `-` (as a SecretRef)."""
    def parse(value: Any) -> Any:
        return SecretRef(value, inner) if is_reference(value) else inner(value)
    return parse


def read_references(values: dict) -> dict:
    """`values` with every SecretRef replaced by what it names (ValueError naming the key)."""
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, SecretRef):
            try:
                out[key] = value.read()
            except ValueError as e:
                raise ValueError(f"{key.replace('_', '-')}: {e}") from None
    return out


def reexec_without(argv: list[str], drop: set[int], moved: dict[str, str]) -> None:
    """Replace this process by tailproxy run with argv minus the indices in `drop`; `moved`
    (setting key -> literal value) travels through a pipe. Does not return."""
    import json     # here: only a re-exec needs it, and --help should not pay for it
    data = json.dumps(moved).encode()
    r, w = os.pipe()
    os.write(w, data)          # far below the pipe's capacity: the write cannot block
    os.close(w)
    os.set_inheritable(r, True)
    env = dict(os.environ)
    env[HANDOVER_ENV] = str(r)
    rest = [a for i, a in enumerate(argv) if i not in drop]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "tailproxy", *rest], env)


def take_handed_over() -> dict[str, str]:
    """The secrets a re-exec handed over (empty when this is no re-exec); the pipe is closed and
    the variable removed, so the program tailproxy runs inherits neither."""
    fd_s = os.environ.pop(HANDOVER_ENV, None)
    if fd_s is None or not fd_s.isdigit():
        return {}
    fd = int(fd_s)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return {}
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        import json
        moved = json.loads(b"".join(chunks))
    except ValueError:
        return {}
    return {k: v for k, v in moved.items() if isinstance(k, str) and isinstance(v, str)}
