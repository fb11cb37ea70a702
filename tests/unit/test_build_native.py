"""tools/build_native.py's checks and records, and what the sdist carries to build from source."""
import json
import os
import stat
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import build_native  # noqa: E402


def fake_go(bin_dir, version: str) -> None:
    go = bin_dir / "go"
    go.write_text(f"#!/bin/sh\necho {version}\n")
    go.chmod(go.stat().st_mode | stat.S_IXUSR)


def test_missing_go_is_named_with_the_version_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(build_native.BuildError, match=r"Go 1\.\d+\.\d+ or newer .* not on PATH"):
        build_native.check_go()


def test_too_old_go_is_named(tmp_path, monkeypatch):
    fake_go(tmp_path, "go1.20.1")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(build_native.BuildError, match="found go1.20.1"):
        build_native.check_go()


def test_missing_compiler_stops_the_build_before_anything_is_built(tmp_path, monkeypatch):
    fake_go(tmp_path, "go9.0.0")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(build_native.BuildError, match="C compiler"):
        build_native.build(str(tmp_path / "out"))
    assert not os.listdir(tmp_path / "out")


def test_pinned_tailscale_version_is_go_mods():
    with open(os.path.join(REPO, "node", "go.mod")) as f:
        assert f"tailscale.com {build_native.pinned_tailscale_version()}" in f.read()


def test_copy_prebuilt_wants_every_native_file(tmp_path):
    (tmp_path / "libtailproxy.so").write_bytes(b"x")
    with pytest.raises(build_native.BuildError, match="libtailproxy-node.so"):
        build_native.copy_prebuilt(str(tmp_path), str(tmp_path / "out"))


def test_the_tree_build_recorded_its_versions():
    with open(os.path.join(REPO, "src", "tailproxy", "_native", "versions.json")) as f:
        versions = json.load(f)
    assert versions["tailscale.com"] == build_native.pinned_tailscale_version()
    assert versions["go"].startswith("go1.")


def test_sdist_has_the_sources_to_build_from_and_no_binaries(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir",
                    str(tmp_path), REPO], check=True, capture_output=True, timeout=300)
    (sdist,) = tmp_path.glob("tailproxy-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    need = {"setup.py", "pyproject.toml", "LICENSE", "tools/build_native.py", "node/go.mod",
            "node/go.sum", "node/capi.go", "preload/Makefile", "preload/exports.map",
            "src/tailproxy/cli.py"}
    assert need <= names, need - names
    assert any(n.startswith("preload/src/") and n.endswith(".c") for n in names)
    assert not [n for n in names if n.endswith(".so") or "/_native/" in n]
