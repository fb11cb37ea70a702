"""Build tailproxy's native parts into one folder.

- libtailproxy.so: the LD_PRELOAD library (C, preload/).
- tailproxy-exec: the seccomp front end for programs LD_PRELOAD cannot reach (C, preload/exec/).
- libtailproxy-node.so: the tailnet node (Go over tailscale.com/tsnet, node/), built c-shared;
  its modules come from the Go module proxy, pinned by node/go.mod and node/go.sum.
- versions.json: the pinned tailscale.com version and the Go that built the node, for
  `tailproxy --version` (an installed package has no go.mod to read).

Both libraries are built to be reproducible: no build paths (-trimpath, -ffile-prefix-map) and
no build id, so the same sources and toolchain give the same bytes.

Used by setup.py (pip install .) and by the Makefile (make native). Run directly:
    python tools/build_native.py OUT_DIR
"""
from __future__ import annotations

import json
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
PRELOAD_LIBRARY = "libtailproxy.so"
EXEC_HELPER = "tailproxy-exec"
VERSIONS_FILE = "versions.json"
LICENSES_FILE = "THIRD_PARTY_LICENSES.txt"
NATIVE_FILES = (PRELOAD_LIBRARY, EXEC_HELPER, NODE_LIBRARY, VERSIONS_FILE, LICENSES_FILE)
_LICENSE_NAMES = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|PATENTS)", re.IGNORECASE)


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


def pinned_tailscale_version() -> str:
    """The tailscale.com version node/go.mod requires."""
    with open(os.path.join(NODE_MODULE, "go.mod")) as f:
        m = re.search(r"^\s*(?:require\s+)?tailscale\.com\s+(v\S+)", f.read(), re.MULTILINE)
    if not m:
        raise BuildError("node/go.mod does not require tailscale.com")
    return m.group(1)


def check_go() -> str:
    go = shutil.which("go")
    need = required_go()
    if not go:
        raise BuildError(f"Go {need} or newer is needed to build the node library; `go` is not on PATH")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    if not out.startswith("go") or _version_tuple(out) < _version_tuple(need):
        raise BuildError(f"Go {need} or newer is needed to build the node library; found {out or 'unknown'}")
    return go


def check_cc() -> None:
    if not shutil.which(os.environ.get("CC", "gcc")):
        raise BuildError("a C compiler (gcc) is needed to build libtailproxy.so and the node "
                         "library (cgo)")


def build_preload(out_dir: str) -> None:
    check_cc()
    # No absolute source paths in the library (assert() and friends embed __FILE__).
    cflags = (os.environ.get("CFLAGS", "") + f" -ffile-prefix-map={ROOT}=.").strip()
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "preload"), f"OUT={out_dir}",
                    f"CFLAGS={cflags}"], check=True)


def build_node(out_dir: str) -> None:
    go = check_go()
    check_cc()
    # -s -w: no symbol tables (36 MB -> 26 MB); Go's panics still name their functions.
    # -buildid= and -trimpath: the same sources give the same bytes wherever they are built.
    cmd = [go, "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w -buildid=",
           f"-tags={NODE_TAGS}",
           "-o", os.path.join(out_dir, NODE_LIBRARY), "."]
    subprocess.run(cmd, cwd=NODE_MODULE, env=dict(os.environ, CGO_ENABLED="1"), check=True)
    header = os.path.join(out_dir, NODE_LIBRARY[:-3] + ".h")
    if os.path.exists(header):      # cgo's header is for C callers; ctypes needs none
        os.remove(header)
    write_versions(out_dir, go)
    write_third_party_licenses(out_dir, go)


def write_versions(out_dir: str, go: str) -> None:
    go_version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                                check=True).stdout.strip()
    versions = {"tailscale.com": pinned_tailscale_version(), "go": go_version}
    with open(os.path.join(out_dir, VERSIONS_FILE), "w") as f:
        json.dump(versions, f, indent=1, sort_keys=True)
        f.write("\n")


def write_third_party_licenses(out_dir: str, go: str) -> None:
    """The license texts of the Go runtime and of every module linked into the node library:
    a binary that carries them must reproduce their notices."""
    listing = subprocess.run(
        [go, "list", "-deps", f"-tags={NODE_TAGS}",
         "-f", "{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}", "."],
        cwd=NODE_MODULE, capture_output=True, text=True, check=True).stdout
    goroot = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True,
                            check=True).stdout.strip()
    modules = [("Go (runtime and standard library)", "", goroot)]
    modules += sorted({tuple(line.split(" ", 2)) for line in listing.splitlines() if line})
    parts = []
    for path, version, mod_dir in modules:
        names = sorted(n for n in os.listdir(mod_dir)
                       if _LICENSE_NAMES.match(n) and os.path.isfile(os.path.join(mod_dir, n)))
        texts = []
        for name in names:
            with open(os.path.join(mod_dir, name), errors="replace") as f:
                texts.append(f"--- {name}\n{f.read().strip()}")
        body = "\n\n".join(texts) or "(the module ships no license file)"
        parts.append(f"{'=' * 78}\n{path} {version}".rstrip() + f"\n{'=' * 78}\n{body}\n")
    with open(os.path.join(out_dir, LICENSES_FILE), "w") as f:
        f.write("Third-party software linked into libtailproxy-node.so, with its licenses.\n\n")
        f.write("\n".join(parts))


def copy_prebuilt(src_dir: str, out_dir: str) -> None:
    """Put already-built native parts (`make native`) into out_dir instead of building them."""
    missing = [n for n in NATIVE_FILES if not os.path.isfile(os.path.join(src_dir, n))]
    if missing:
        raise BuildError(f"{src_dir} lacks {', '.join(missing)}: run `make native` first")
    os.makedirs(out_dir, exist_ok=True)
    for name in NATIVE_FILES:
        shutil.copyfile(os.path.join(src_dir, name), os.path.join(out_dir, name))
        shutil.copymode(os.path.join(src_dir, name), os.path.join(out_dir, name))


def build(out_dir: str) -> None:
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    check_cc()      # both toolchains first: say what is missing before minutes of building
    check_go()
    build_preload(out_dir)
    build_node(out_dir)


if __name__ == "__main__":
    try:
        build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "src", "tailproxy", "_native"))
    except BuildError as e:
        sys.exit(f"build_native: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"build_native: {' '.join(map(str, e.cmd))} failed with status {e.returncode}")
