"""Build tailproxy's native parts into one folder.

- libtailproxy.so: the LD_PRELOAD library (C, preload/).
- libtailproxy-node.so: the tailnet node (Go over tailscale.com/tsnet, node/), built c-shared;
  its modules come from the Go module proxy, pinned by node/go.mod and node/go.sum.

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
NODE_MODULE = os.path.join(ROOT, "node")
NODE_LIBRARY = "libtailproxy-node.so"
# Parts of Tailscale the node must not have. peerapiserver: in netstack mode it listens on
# 0.0.0.0 of this host (a port the LAN could reach), and a client node serves peers nothing.
# portmapper: never ask the LAN's router to open a port (TS_DISABLE_PORTMAPPER says so too).
NODE_TAGS = "ts_omit_peerapiserver,ts_omit_portmapper"


class BuildError(Exception):
    pass


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def required_go() -> str:
    with open(os.path.join(NODE_MODULE, "go.mod")) as f:
        for line in f:
            if line.startswith("go "):
                return line.split()[1]
    raise BuildError("node/go.mod has no go directive")


def check_go() -> str:
    go = shutil.which("go")
    need = required_go()
    if not go:
        raise BuildError(f"Go {need} or newer is needed to build the node library; `go` is not on PATH")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    if not out.startswith("go") or _version_tuple(out) < _version_tuple(need):
        raise BuildError(f"Go {need} or newer is needed to build the node library; found {out or 'unknown'}")
    return go


def build_preload(out_dir: str) -> None:
    if not shutil.which(os.environ.get("CC", "gcc")):
        raise BuildError("a C compiler (gcc) is needed to build libtailproxy.so")
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "preload"), f"OUT={out_dir}"], check=True)


def build_node(out_dir: str) -> None:
    go = check_go()
    if not shutil.which(os.environ.get("CC", "gcc")):
        raise BuildError("a C compiler (gcc) is needed to build the node library (cgo)")
    # -s -w: no symbol tables (36 MB -> 26 MB); Go's panics still name their functions.
    cmd = [go, "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", f"-tags={NODE_TAGS}",
           "-o", os.path.join(out_dir, NODE_LIBRARY), "."]
    subprocess.run(cmd, cwd=NODE_MODULE, env=dict(os.environ, CGO_ENABLED="1"), check=True)
    header = os.path.join(out_dir, NODE_LIBRARY[:-3] + ".h")
    if os.path.exists(header):      # cgo's header is for C callers; ctypes needs none
        os.remove(header)


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
