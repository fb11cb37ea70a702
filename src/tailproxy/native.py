"""Where the native parts shipped inside the package live (libtailproxy.so, libtailproxy-node.so)."""
from __future__ import annotations

import os

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native")


def native_path(name: str) -> str:
    """Path of a native file; TAILPROXY_NATIVE_DIR overrides the packaged folder."""
    base = os.environ.get("TAILPROXY_NATIVE_DIR") or _DIR
    path = os.path.join(base, name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{name} is missing from {base}: the package was installed without its native parts "
            f"(reinstall with `pip install .` or run `make native`)")
    return path


def build_versions() -> dict:
    """What the native parts were built from ({"tailscale.com": ..., "go": ...}; {} when they
    were not built), as tools/build_native.py recorded it."""
    import json
    base = os.environ.get("TAILPROXY_NATIVE_DIR") or _DIR
    try:
        with open(os.path.join(base, "versions.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
