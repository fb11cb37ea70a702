"""Find the program to run and tell whether the preload library can reach it."""
from __future__ import annotations

import os
import stat
import struct

# Names for annotations only (never evaluated: `from __future__ import annotations`). No
# `typing`, `collections.abc` or `dataclasses` here: this module is on an attaching run's way
# to its program's exec (issue 16: <= 50 ms), and those imports alone cost ~half of it.
Callable = object

PT_INTERP = 3


class ProgramError(Exception):
    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def which(name: str, path: str | None) -> str | None:
    """shutil.which(name, mode=os.F_OK, path=path) without importing shutil (with its
    compression modules, ~10 ms of an attaching run's way to exec): the first PATH entry
    (an empty one is the current directory, as for the shell) holding a non-directory `name`."""
    if path is None:
        path = os.environ.get("PATH") or os.defpath
    for d in path.split(os.pathsep):
        candidate = os.path.join(d, name)
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            return candidate
    return None


def locate(name: str, path: str | None) -> str:
    """Absolute path of the program, or ProgramError with the shell's exit status (127/126)."""
    if "/" in name:
        if not os.path.exists(name):
            raise ProgramError(f"{name}: no such file", 127)
        found = name
    else:
        found = which(name, path)
        if not found:
            raise ProgramError(f"{name}: command not found", 127)
    if os.path.isdir(found):
        raise ProgramError(f"{name}: is a directory", 126)
    if not os.access(found, os.X_OK):
        raise ProgramError(f"{name}: permission denied (not executable)", 126)
    return found


def _elf_is_dynamic(head: bytes, f) -> bool | None:
    """True if the ELF file asks for a program interpreter (ld.so); None if not ELF."""
    if head[:4] != b"\x7fELF":
        return None
    is64, little = head[4] == 2, head[5] == 1
    e = "<" if little else ">"
    if is64:
        phoff, = struct.unpack_from(e + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 0x36)
    else:
        phoff, = struct.unpack_from(e + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 0x2A)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, = struct.unpack_from(e + "I", table, i * phentsize)
        if p_type == PT_INTERP:
            return True
    return False


def coverage_warning(path: str, search_path: str | None, depth: int = 0) -> str | None:
    """A one-line warning if LD_PRELOAD cannot reach the program, else None."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            head = f.read(128)
            dynamic = _elf_is_dynamic(head, f) if len(head) >= 64 else None
    except (OSError, struct.error):
        return None
    name = os.path.basename(path)
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return (f"{name} is setuid/setgid: the loader ignores LD_PRELOAD for it, so its connections "
                f"bypass the tailnet unless it honours ALL_PROXY/HTTP_PROXY")
    if dynamic is False:
        return (f"{name} is statically linked: LD_PRELOAD cannot reach it, so only connections it "
                f"makes through ALL_PROXY/HTTP_PROXY go through the tailnet")
    if dynamic is None and head.startswith(b"#!") and depth < 2:
        words = head[2:].split(b"\n", 1)[0].split()
        if not words:
            return None
        interp = os.fsdecode(words[0])
        if os.path.basename(interp) == "env" and len(words) > 1:
            interp = which(os.fsdecode(words[1]), search_path) or interp
        return coverage_warning(interp, search_path, depth + 1)
    return None


def program_and_preload(command: list[str], say: Callable[[str], None], intercept: str = "preload"
                        ) -> tuple[str | None, str, "Interception"] | int:
    """The program's path (None without a command; a coverage warning said), the preload's, and
    the front end that intercepts it (intercept.py: `--intercept`), or the exit status to end
    with (the reason said): what a run checks before anything starts."""
    from ..native import native_path
    from .intercept import Interception, choose
    program = None
    interception = Interception("preload")
    if command:
        try:
            program = locate(command[0], os.environ.get("PATH"))
        except ProgramError as e:
            say(str(e))
            return e.exit_status
        interception = choose(intercept, program, say)
        warning = (coverage_warning(program, os.environ.get("PATH"))
                   if interception.kind == "preload" else None)
        if warning:
            say("warning: " + warning)
    try:
        return program, native_path("libtailproxy.so"), interception
    except FileNotFoundError as e:
        say(str(e))
        return 1
