"""Which front end intercepts a program's connections: the LD_PRELOAD library, or the seccomp
supervisor (tailproxy-exec, preload/exec/) for what LD_PRELOAD cannot reach: static binaries and
Go programs of either linkage (Go makes connect() and DNS as raw syscalls even when it links
libc). `--intercept auto` picks by the program's ELF; `seccomp` takes every program (raw syscalls
in dynamic ones too); `preload` is the library alone. Where seccomp user notification is
unavailable, one line says so and the run falls back to the preload and proxy variables."""
from __future__ import annotations

import os
import stat
import struct

# For annotations only; no `typing`, `dataclasses` or `subprocess` at import: this module is on
# an attaching run's way to its program's exec (see program.py).
Callable = object

PT_INTERP, PT_NOTE = 3, 4
NT_GO_BUILDID = 4
_GO_SECTIONS = (b".go.buildinfo", b".note.go.buildid")
_MAX_HEADERS = 1 << 20          # bytes of program or section headers we read at most
EXEC_HELPER = "tailproxy-exec"


class ElfFacts:
    __slots__ = ("dynamic", "go")

    def __init__(self, dynamic: bool, go: bool):
        self.dynamic = dynamic      # asks for a program interpreter (ld.so)
        self.go = go                # built by Go (its build ID note or .go.buildinfo section)

    def __eq__(self, other: object) -> bool:
        return type(other) is ElfFacts and (self.dynamic, self.go) == (other.dynamic, other.go)

    __hash__ = None

    def __repr__(self) -> str:
        return f"ElfFacts(dynamic={self.dynamic}, go={self.go})"


def elf_facts(path: str) -> ElfFacts | None:
    """What the ELF file's headers say; None if it is not a (readable) ELF file."""
    try:
        with open(path, "rb") as f:
            return _read_facts(f)
    except (OSError, struct.error, ValueError):
        return None


def _read_facts(f) -> ElfFacts | None:
    head = f.read(64)
    if len(head) < 52 or head[:4] != b"\x7fELF":
        return None
    is64, e = head[4] == 2, "<" if head[5] == 1 else ">"
    if is64:
        phoff, shoff = struct.unpack_from(e + "QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "HHHHH", head, 0x36)
    else:
        phoff, shoff = struct.unpack_from(e + "II", head, 0x1C)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "HHHHH", head, 0x2A)
    dynamic = go = False
    if 0 < phentsize * phnum <= _MAX_HEADERS:
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, = struct.unpack_from(e + "I", table, i * phentsize)
            if p_type == PT_INTERP:
                dynamic = True
            elif p_type == PT_NOTE and not go:
                if is64:
                    offset, = struct.unpack_from(e + "Q", table, i * phentsize + 8)
                    size, = struct.unpack_from(e + "Q", table, i * phentsize + 32)
                else:
                    offset, = struct.unpack_from(e + "I", table, i * phentsize + 4)
                    size, = struct.unpack_from(e + "I", table, i * phentsize + 16)
                go = _has_go_note(f, offset, min(size, 4096), e)
    if not go and 0 < shentsize * shnum <= _MAX_HEADERS and shstrndx < shnum:
        go = _has_go_section(f, shoff, shentsize, shnum, shstrndx, is64, e)
    return ElfFacts(dynamic=dynamic, go=go)


def _has_go_note(f, offset: int, size: int, e: str) -> bool:
    f.seek(offset)
    data = f.read(size)
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", data, pos)
        name = data[pos + 12:pos + 12 + namesz]
        if ntype == NT_GO_BUILDID and name.rstrip(b"\0") == b"Go":
            return True
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _has_go_section(f, shoff: int, shentsize: int, shnum: int, shstrndx: int, is64: bool,
                    e: str) -> bool:
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    fmt = e + ("IIQQQQ" if is64 else "IIIIII")

    def section(i: int) -> tuple[int, int, int]:      # name offset, file offset, size
        name, _type, _flags, _addr, off, size = struct.unpack_from(fmt, table, i * shentsize)
        return name, off, size

    _, str_off, str_size = section(shstrndx)
    f.seek(str_off)
    names = f.read(min(str_size, _MAX_HEADERS))
    for i in range(shnum):
        start = section(i)[0]
        end = names.find(b"\0", start)
        if names[start:end] in _GO_SECTIONS:
            return True
    return False


class Interception:
    __slots__ = ("kind", "helper", "dynamic")

    def __init__(self, kind: str, helper: str | None = None, dynamic: bool = True):
        self.kind = kind            # "preload" or "seccomp"
        # tailproxy-exec: runs the program (seccomp), or (preload, --intercept auto) the static
        # and Go programs it execs (TAILPROXY_EXEC: the preload's execstatic.c)
        self.helper = helper
        self.dynamic = dynamic      # the program loads ld.so: the preload goes along (name hooks)

    def _key(self) -> tuple:
        return self.kind, self.helper, self.dynamic

    def __eq__(self, other: object) -> bool:
        return type(other) is Interception and self._key() == other._key()

    __hash__ = None

    def __repr__(self) -> str:
        return f"Interception({self.kind!r}, {self.helper!r}, {self.dynamic!r})"

    def argv(self, program: str, command: list[str]) -> tuple[str, list[str]]:
        """(executable, command) to start: the program itself, or the helper running it."""
        if self.kind != "seccomp":
            return program, command
        return self.helper, [command[0], program, *command]

    def env(self, env: dict, parent: dict, preload: str) -> dict:
        """The program's environment (childenv.child_env's) adjusted for this front end: under
        seccomp the helper does not load the preload itself; the program gets it (dynamic ones
        only) from the helper (TAILPROXY_EXEC_PRELOAD)."""
        if self.kind != "seccomp":
            if self.helper:
                env = dict(env, TAILPROXY_EXEC=self.helper)
            return env
        env = dict(env)
        env.pop("TAILPROXY_EXEC", None)     # the filter is inherited by whatever it execs
        if parent.get("LD_PRELOAD", "").strip():
            env["LD_PRELOAD"] = parent["LD_PRELOAD"]
        else:
            env.pop("LD_PRELOAD", None)
        if self.dynamic:
            env["TAILPROXY_EXEC_PRELOAD"] = preload
        else:
            env.pop("TAILPROXY_EXEC_PRELOAD", None)
        return env


def seccomp_unavailable(helper: str) -> str | None:
    """Why seccomp user notification cannot be used here (the helper's probe), or None."""
    import subprocess
    try:
        cp = subprocess.run([helper, "--probe"], capture_output=True, text=True, timeout=10,
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if cp.returncode == 0:
        return None
    return cp.stderr.strip().splitlines()[-1] if cp.stderr.strip() else f"status {cp.returncode}"


def wants_seccomp(mode: str, program: str) -> tuple[bool, bool]:
    """(seccomp?, dynamic?) for this mode and program. A script is judged by its interpreter's
    kind in the preload's coverage check, and runs under the preload here; so does a setuid or
    setgid program (the filter needs no_new_privs, which would run it unprivileged)."""
    facts = elf_facts(program)
    dynamic = facts.dynamic if facts else True
    try:
        if os.stat(program).st_mode & (stat.S_ISUID | stat.S_ISGID):
            return False, dynamic   # no_new_privs would strip its privileges: never seccomp
    except OSError:
        pass
    if mode == "seccomp":
        return True, dynamic
    if mode == "auto" and facts is not None:
        return (not facts.dynamic) or facts.go, dynamic
    return False, dynamic


def choose(mode: str, program: str, say: Callable[[str], None]) -> Interception:
    """The front end for this run; the fallback line said when seccomp was wanted and cannot
    be had."""
    from ..native import native_path
    seccomp, dynamic = wants_seccomp(mode, program)
    if not seccomp:
        if mode != "auto":
            return Interception("preload")
        try:    # what it execs that the preload cannot reach, tailproxy-exec runs
            return Interception("preload", native_path(EXEC_HELPER))
        except FileNotFoundError:
            return Interception("preload")
    try:
        helper = native_path(EXEC_HELPER)
    except FileNotFoundError as e:
        why = str(e)
    else:
        why = seccomp_unavailable(helper)
        if why is None:
            return Interception("seccomp", helper, dynamic)
    say(f"seccomp interception unavailable ({why}): {os.path.basename(program)} runs with the "
        f"preload and ALL_PROXY/HTTP_PROXY only")
    return Interception("preload")
