"""Build tailproxy's native parts into one folder.

- libtailproxy.so: the LD_PRELOAD library (C, preload/).
- tailscaled, tailscale: the upstream node, pinned by tools/node-bin/go.mod, built from the Go
  module proxy.

Used by setup.py (pip install .) and by the Makefile (make native). Run directly:
    python tools/build_native.py OUT_DIR
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_MODULE = os.path.join(ROOT, "tools", "node-bin")


class BuildError(Exception):
    pass


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def required_go() -> str:
    with open(os.path.join(NODE_MODULE, "go.mod")) as f:
        for line in f:
            if line.startswith("go "):
                return line.split()[1]
    raise BuildError("tools/node-bin/go.mod has no go directive")


def check_go() -> str:
    go = shutil.which("go")
    need = required_go()
    if not go:
        raise BuildError(f"Go {need} or newer is needed to build tailscaled; `go` is not on PATH")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    if not out.startswith("go") or _version_tuple(out) < _version_tuple(need):
        raise BuildError(f"Go {need} or newer is needed to build tailscaled; found {out or 'unknown'}")
    return go


def build_preload(out_dir: str) -> None:
    if not shutil.which(os.environ.get("CC", "gcc")):
        raise BuildError("a C compiler (gcc) is needed to build libtailproxy.so")
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "preload"), f"OUT={out_dir}"], check=True)


def build_node(out_dir: str) -> None:
    go = check_go()
    env = dict(os.environ, CGO_ENABLED="0")
    cmd = [go, "build", "-trimpath", "-o", out_dir + os.sep,
           "tailscale.com/cmd/tailscaled", "tailscale.com/cmd/tailscale"]
    subprocess.run(cmd, cwd=NODE_MODULE, env=env, check=True)


def build(out_dir: str) -> None:
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    build_preload(out_dir)
    build_node(out_dir)


if __name__ == "__main__":
    try:
        build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "src", "tailproxy", "_native"))
    except BuildError as e:
        sys.exit(f"build_native: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"build_native: {' '.join(map(str, e.cmd))} failed with status {e.returncode}")
