"""Find (or build once) the pinned tailscaled, tailscale and headscale binaries.

tailscaled + tailscale v1.94.1 (the peers, exit nodes and benchmark anchors; pinned by
tools/tailscale-bin/go.mod) and (v0.28.0, pinned by tools/testnet-bin/go.mod) come from
<repo>/build/testnet-bin/, built when missing or stale. "Stale" means the go.mod/go.sum
hash recorded next to the binary differs from the current pin. Builds go to a temp folder
and are renamed into place under a file lock, so concurrent runs never see half a binary.
TESTNET_TAILSCALED, TESTNET_TAILSCALE and TESTNET_HEADSCALE name explicit binaries instead.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .procs import PartFailed

PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../tailproxy


def log(msg: str) -> None:
    print(f"testnet: {msg}", file=sys.stderr, flush=True)


def repo_root() -> str | None:
    """The source checkout we run from (src layout), or $TAILPROXY_REPO."""
    for cand in (os.environ.get("TAILPROXY_REPO"), os.path.dirname(os.path.dirname(PKG_DIR))):
        if cand and os.path.isfile(os.path.join(cand, "tools", "testnet-bin", "go.mod")):
            return os.path.abspath(cand)
    return None


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _pin_hash(module_dir: str) -> str:
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        p = os.path.join(module_dir, name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def _stamp_ok(out_dir: str, what: str, pin: str, names: list[str]) -> bool:
    try:
        with open(os.path.join(out_dir, f".{what}.pin")) as f:
            if f.read().strip() != pin:
                return False
    except OSError:
        return False
    return all(_executable(os.path.join(out_dir, n)) for n in names)


def _go_build(part: str, module_dir: str, pkgs: list[str], out_dir: str, env: dict) -> None:
    go = shutil.which("go")
    if not go:
        raise PartFailed(part, "`go` is not on PATH; Go is needed to build the pinned binaries")
    cmd = [go, "build", "-trimpath", "-o", out_dir + os.sep, *pkgs]
    r = subprocess.run(cmd, cwd=module_dir, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise PartFailed(part, f"`{' '.join(cmd)}` (in {module_dir}) failed with status {r.returncode}",
                         output=r.stdout[-4000:])


def _build_cached(what: str, module_dir: str, pkgs: list[str], names: list[str], out_dir: str,
                  env: dict) -> None:
    pin = _pin_hash(module_dir)
    if _stamp_ok(out_dir, what, pin, names):
        return
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".lock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # another run may be building the same thing
        if _stamp_ok(out_dir, what, pin, names):
            return
        log(f"building {', '.join(names)} (pinned in {os.path.relpath(module_dir, repo_root() or '/')}) ...")
        t0 = time.monotonic()
        tmp = tempfile.mkdtemp(prefix=f".{what}-", dir=out_dir)
        try:
            _go_build(f"build {what}", module_dir, pkgs, tmp, env)
            for n in names:
                os.replace(os.path.join(tmp, n), os.path.join(out_dir, n))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with open(os.path.join(out_dir, f".{what}.pin"), "w") as f:
            f.write(pin + "\n")
        log(f"built {', '.join(names)} in {time.monotonic() - t0:.1f}s")


def find_binaries(build: bool = True) -> dict[str, str]:
    """Paths of tailscaled, tailscale, headscale; builds what is missing (unless build=False)."""
    t0 = time.monotonic()
    override = {n: os.environ.get(f"TESTNET_{n.upper()}") for n in ("tailscaled", "tailscale", "headscale")}
    override = {n: os.path.abspath(p) for n, p in override.items() if p}
    for n, p in override.items():
        if not _executable(p):
            raise PartFailed("binaries", f"TESTNET_{n.upper()}={p} is not an executable file")
    if len(override) == 3:
        return override
    root = repo_root()
    out_dir = os.path.join(root, "build", "testnet-bin") if root else None
    bins: dict[str, str] = {}

    if "tailscaled" in override and "tailscale" in override:
        bins.update(tailscaled=override["tailscaled"], tailscale=override["tailscale"])
    elif out_dir and build:
        _build_cached("tailscale", os.path.join(root, "tools", "tailscale-bin"),
                      ["tailscale.com/cmd/tailscaled", "tailscale.com/cmd/tailscale"],
                      ["tailscaled", "tailscale"], out_dir, dict(os.environ, CGO_ENABLED="0"))
    if "tailscaled" not in bins and out_dir:
        if all(_executable(os.path.join(out_dir, n)) for n in ("tailscaled", "tailscale")):
            bins["tailscaled"] = os.path.join(out_dir, "tailscaled")
            bins["tailscale"] = os.path.join(out_dir, "tailscale")

    if "headscale" in override:
        bins["headscale"] = override["headscale"]
    elif out_dir and build:
        _build_cached("headscale", os.path.join(root, "tools", "testnet-bin"),
                      ["github.com/juanfont/headscale/cmd/headscale"], ["headscale"], out_dir,
                      dict(os.environ))
    if "headscale" not in bins and out_dir and _executable(os.path.join(out_dir, "headscale")):
        bins["headscale"] = os.path.join(out_dir, "headscale")

    missing = [n for n in ("tailscaled", "tailscale", "headscale") if n not in bins]
    if missing:
        where = "no source checkout found (set TAILPROXY_REPO)" if not root else f"looked in {out_dir}"
        raise PartFailed("binaries", f"missing {', '.join(missing)}; {where}")
    dt = time.monotonic() - t0
    if dt > 1:
        log(f"binaries ready in {dt:.1f}s")
    return bins
