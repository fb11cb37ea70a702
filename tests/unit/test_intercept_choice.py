"""launcher/intercept.py: reading an ELF file's kind (dynamic? Go?), choosing the front end for
`--intercept`, the fallback line, and the command and environment the seccomp helper gets."""
import os
import struct

import pytest

from tailproxy.config import ConfigError, resolve
from tailproxy.launcher import intercept
from tailproxy.launcher.intercept import Interception, choose, elf_facts, wants_seccomp

PT_LOAD, PT_INTERP, PT_NOTE = 1, 3, 4


def make_elf(path, *, interp=False, go_note=False, go_section=False):
    """A minimal little-endian ELF64 file: program headers (PT_LOAD, maybe PT_INTERP and a
    PT_NOTE with Go's build ID note) and, if asked, section headers naming .go.buildinfo."""
    phdrs, blobs = [(PT_LOAD, 0, 0)], b""
    data_off = 64 + 56 * 3
    if interp:
        blob = b"/lib64/ld-linux-x86-64.so.2\0"
        phdrs.append((PT_INTERP, data_off + len(blobs), len(blob)))
        blobs += blob
    if go_note:
        desc = b"buildid-xyz\0"
        note = struct.pack("<III", 4, len(desc), 4) + b"Go\0\0" + desc
        phdrs.append((PT_NOTE, data_off + len(blobs), len(note)))
        blobs += note
    shoff = shnum = shstrndx = 0
    sections = b""
    if go_section:
        names = b"\0.shstrtab\0.go.buildinfo\0"
        names_off = data_off + len(blobs)
        blobs += names
        shoff = data_off + len(blobs)
        null = b"\0" * 64
        strtab = struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, names_off, len(names), 0, 0, 1, 0)
        goinfo = struct.pack("<IIQQQQIIQQ", 11, 1, 0, 0, 0, 0, 0, 0, 1, 0)
        sections = null + strtab + goinfo
        shnum, shstrndx = 3, 1
    head = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    head += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, shoff, 0, 64, 56, len(phdrs), 64,
                        shnum, shstrndx)
    table = b"".join(struct.pack("<IIQQQQQQ", t, 5, off, 0, 0, size, size, 8)
                     for t, off, size in phdrs)
    table = table.ljust(56 * 3, b"\0")
    path.write_bytes(head + table + blobs + sections)
    return str(path)


def test_elf_facts(tmp_path):
    assert elf_facts(make_elf(tmp_path / "a")) == intercept.ElfFacts(dynamic=False, go=False)
    assert elf_facts(make_elf(tmp_path / "b", interp=True)).dynamic is True
    assert elf_facts(make_elf(tmp_path / "c", go_note=True)).go is True
    assert elf_facts(make_elf(tmp_path / "d", interp=True, go_section=True)) == \
        intercept.ElfFacts(dynamic=True, go=True)
    (tmp_path / "script").write_text("#!/bin/sh\necho hi\n")
    assert elf_facts(str(tmp_path / "script")) is None
    (tmp_path / "short").write_bytes(b"\x7fELF\x02")
    assert elf_facts(str(tmp_path / "short")) is None
    assert elf_facts(str(tmp_path / "missing")) is None


def test_wants_seccomp_by_mode(tmp_path):
    static, dyn = make_elf(tmp_path / "s"), make_elf(tmp_path / "d", interp=True)
    cgo = make_elf(tmp_path / "g", interp=True, go_note=True)
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/sh\n")
    assert wants_seccomp("auto", static) == (True, False)
    assert wants_seccomp("auto", cgo) == (True, True)           # Go, even linked with libc
    assert wants_seccomp("auto", dyn) == (False, True)
    assert wants_seccomp("auto", str(script)) == (False, True)  # its interpreter decides
    assert wants_seccomp("seccomp", dyn) == (True, True)        # raw syscalls in dynamic ones
    assert wants_seccomp("preload", static) == (False, False)
    os.chmod(static, 0o4755)                                    # setuid: never seccomp
    assert wants_seccomp("auto", static) == (False, False)
    assert wants_seccomp("seccomp", static) == (False, False)


def test_choose_seccomp_when_the_probe_passes(tmp_path, monkeypatch):
    helper = tmp_path / "tailproxy-exec"
    helper.write_text("")
    monkeypatch.setattr("tailproxy.native.native_path", lambda name: str(helper))
    monkeypatch.setattr(intercept, "seccomp_unavailable", lambda h: None)
    said = []
    got = choose("auto", make_elf(tmp_path / "s"), said.append)
    assert got == Interception("seccomp", str(helper), dynamic=False) and said == []
    # a dynamic program: the preload, and the helper for the static/Go programs it execs
    dyn = make_elf(tmp_path / "d", interp=True)
    assert choose("auto", dyn, said.append) == Interception("preload", str(helper))
    assert choose("preload", dyn, said.append) == Interception("preload")


def test_choose_falls_back_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("tailproxy.native.native_path", lambda name: str(tmp_path / "h"))
    monkeypatch.setattr(intercept, "seccomp_unavailable", lambda h: "Operation not permitted")
    said = []
    got = choose("auto", make_elf(tmp_path / "prog"), said.append)
    assert got.kind == "preload"
    assert said == ["seccomp interception unavailable (Operation not permitted): prog runs "
                    "with the preload and ALL_PROXY/HTTP_PROXY only"]


def test_probe_of_a_helper_that_fails(tmp_path):
    helper = tmp_path / "probe"
    helper.write_text("#!/bin/sh\necho 'Function not implemented' >&2\nexit 1\n")
    helper.chmod(0o755)
    assert intercept.seccomp_unavailable(str(helper)) == "Function not implemented"
    helper.write_text("#!/bin/sh\nexit 0\n")
    assert intercept.seccomp_unavailable(str(helper)) is None


def test_seccomp_argv_and_env():
    i = Interception("seccomp", "/n/tailproxy-exec", dynamic=True)
    assert i.argv("/usr/bin/prog", ["prog", "-x"]) == \
        ("/n/tailproxy-exec", ["prog", "/usr/bin/prog", "prog", "-x"])
    env = {"LD_PRELOAD": "/u/lib.so:/n/libtailproxy.so", "A": "1"}
    out = i.env(env, {"LD_PRELOAD": "/u/lib.so"}, "/n/libtailproxy.so")
    # the helper itself runs without our preload; the (dynamic) program gets it from the helper
    assert out == {"LD_PRELOAD": "/u/lib.so", "A": "1",
                   "TAILPROXY_EXEC_PRELOAD": "/n/libtailproxy.so"}
    static = Interception("seccomp", "/n/tailproxy-exec", dynamic=False)
    assert static.env(env, {}, "/n/libtailproxy.so") == {"A": "1"}
    pre = Interception("preload")
    assert pre.argv("/p", ["p"]) == ("/p", ["p"]) and pre.env(env, {}, "x") is env
    auto = Interception("preload", "/n/tailproxy-exec")
    assert auto.argv("/p", ["p"]) == ("/p", ["p"])
    assert auto.env(env, {}, "x") == dict(env, TAILPROXY_EXEC="/n/tailproxy-exec")


def test_intercept_setting(tmp_path):
    none = str(tmp_path / "none.toml")
    (tmp_path / "none.toml").write_text("")
    assert resolve({}, {}, none, None).intercept == "auto"
    assert resolve({}, {"TAILPROXY_INTERCEPT": "Seccomp"}, none, None).intercept == "seccomp"
    (tmp_path / "bad.toml").write_text('intercept = "ptrace"\n')
    with pytest.raises(ConfigError, match="expected auto, preload or seccomp"):
        resolve({}, {}, str(tmp_path / "bad.toml"), None)
