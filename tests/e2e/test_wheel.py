"""The wheel, as a user gets it: built once (from the native parts `make native` left in the
tree, so no second Go build), installed into a fresh venv (and with pipx) by a PATH that has no
go, gcc or cc, and then `tailproxy curl http://peer:PORT/` on the local tailnet.

The test tailnet has no internet, so the runtime dependencies come from build/wheelhouse
(`make wheelhouse`, which `make test` runs first)."""
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import build_wheel  # noqa: E402

pytestmark = pytest.mark.tailnet

WHEELHOUSE = os.path.join(REPO, "build", "wheelhouse")
NATIVE = os.path.join(REPO, "src", "tailproxy", "_native")
TOOLCHAIN = re.compile(r"^(go|gofmt|cc|c89|c99|c\+\+|g\+\+.*|gcc.*|cpp.*|clang.*|tcc|zig"
                       r"|.*-linux-gnu-(gcc|g\+\+|cpp).*)$")


def run(argv, env, cwd, timeout=300):
    cp = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert cp.returncode == 0, f"{argv} exited {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    return cp


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel), built once for the module."""
    assert os.path.isfile(os.path.join(NATIVE, "libtailproxy-node.so")), "run `make native` first"
    return build_wheel.build_sdist_and_wheel(NATIVE, str(tmp_path_factory.mktemp("dist")))


@pytest.fixture(scope="module")
def wheel(dist):
    return dist[1]


@pytest.fixture(scope="module")
def toolless_path(tmp_path_factory):
    """A PATH with every program of today's PATH but compilers and Go: a folder of links."""
    bin_dir = tmp_path_factory.mktemp("toolless-bin")
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d) or os.path.abspath(d).startswith(REPO):
            continue        # nothing from the checkout (its .venv) either
        for name in os.listdir(d):
            target, link = os.path.join(d, name), bin_dir / name
            if TOOLCHAIN.match(name) or link.exists() or not os.access(target, os.X_OK):
                continue
            link.symlink_to(target)
    path = str(bin_dir)
    for tool in ("go", "gcc", "cc", "c++", "clang"):
        assert shutil.which(tool, path=path) is None, tool
    assert shutil.which("curl", path=path), "curl is needed on the toolless PATH"
    return path


@pytest.fixture(scope="module")
def user_env(toolless_path, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=toolless_path, HOME=str(home), PIP_NO_INDEX="1",
               PIP_FIND_LINKS=WHEELHOUSE, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("TAILPROXY_NATIVE_DIR", None)
    assert os.path.isdir(WHEELHOUSE), "run `make wheelhouse` first (the tailnet has no internet)"
    return env


@pytest.fixture(scope="module")
def venv(wheel, user_env, tmp_path_factory):
    """A fresh venv with the wheel installed by pip, without a compiler or Go on PATH."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(root)], user_env, str(root))
    run([str(root / "bin" / "pip"), "install", wheel], user_env, str(root))
    return root


def test_wheel_is_manylinux_and_carries_python_and_native_parts(wheel):
    assert re.fullmatch(r"tailproxy-[\d.]+-py3-none-manylinux_2_\d+_x86_64\.whl",
                        os.path.basename(wheel)), wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in ("libtailproxy.so", "libtailproxy-node.so", "versions.json",
                 "THIRD_PARTY_LICENSES.txt"):
        assert f"tailproxy/_native/{part}" in names
    assert "tailproxy/cli.py" in names and "tailproxy/proxy/server.py" in names
    show = build_wheel.auditwheel_show(wheel)
    assert "is consistent with" in show and "manylinux_2_" in show, show


def test_a_second_build_gives_the_same_bytes(dist, tmp_path):
    again = build_wheel.build_sdist_and_wheel(NATIVE, str(tmp_path))
    for first, second in zip(dist, again):
        with open(first, "rb") as a, open(second, "rb") as b:
            assert a.read() == b.read(), f"{os.path.basename(first)} differs between two builds"


def test_installed_package_is_the_venvs_own(venv, user_env):
    cp = run([str(venv / "bin" / "python"), "-c", "import tailproxy, tailproxy.native as n;"
              "print(tailproxy.__file__); print(n.native_path('libtailproxy-node.so'))"],
             user_env, str(venv))
    for line in cp.stdout.split():
        assert line.startswith(str(venv)), cp.stdout


def test_version_and_python_dash_m_from_the_wheel(venv, user_env):
    with open(os.path.join(REPO, "node", "go.mod")) as f:
        pinned = re.search(r"^\s*tailscale\.com\s+(v\S+)", f.read(), re.MULTILINE).group(1)
    cp = run([str(venv / "bin" / "tailproxy"), "--version"], user_env, str(venv))
    assert f"(tailscale.com {pinned}, go" in cp.stdout, cp.stdout
    cp = run([str(venv / "bin" / "python"), "-m", "tailproxy", "completion", "bash"], user_env,
             str(venv))
    assert "complete -F _tailproxy" in cp.stdout


def curl_peer_through(tailproxy: str, env: dict, cwd: str, testnet, hostname: str):
    peer = testnet["peers"]["peer"]
    state = os.path.join(cwd, "state-" + hostname)
    return run([tailproxy, "--state-dir", state, "--hostname", hostname, "--ephemeral",
                "curl", "-sS", "--noproxy", "*", "-m", "20", f"http://peer:{peer['http_port']}/"],
               env, cwd, timeout=180)


def test_tailproxy_from_the_wheel_reaches_a_peer_without_a_toolchain(venv, user_env, testnet):
    cp = curl_peer_through(str(venv / "bin" / "tailproxy"), user_env, str(venv), testnet,
                           "wheel")
    assert '"host": "peer"' in cp.stdout, cp.stdout + cp.stderr


def test_pipx_install_of_the_wheel(wheel, user_env, testnet, tmp_path):
    pipx = shutil.which("pipx", path=os.path.dirname(sys.executable))
    assert pipx, "pipx is missing (make dev installs it)"
    env = dict(user_env, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"), PIPX_DEFAULT_PYTHON=sys._base_executable)
    run([pipx, "install", "--pip-args=--no-index --find-links=" + WHEELHOUSE, wheel], env,
        str(tmp_path))
    cp = curl_peer_through(str(tmp_path / "bin" / "tailproxy"), env, str(tmp_path), testnet,
                           "wheel-pipx")
    assert '"host": "peer"' in cp.stdout, cp.stdout + cp.stderr
