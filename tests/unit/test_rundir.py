"""The per-user runtime directory and per-run directories (rundir.py): created private, refused
with one clear line when someone else owns or planted them, stale runs cleaned up."""
import os
import socket
import subprocess
import sys

import pytest

from tailproxy import rundir
from tailproxy.rundir import RunDirError


def _env(tmp_path):
    return {"XDG_RUNTIME_DIR": str(tmp_path)}


def test_created_0700_under_xdg_runtime_dir(tmp_path):
    path = rundir.user_runtime_dir(_env(tmp_path))
    assert path == str(tmp_path / "tailproxy")
    st = os.lstat(path)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.getuid()


def test_fallback_is_per_uid_in_tmp():
    path = rundir.user_runtime_dir({})
    assert path == f"/tmp/tailproxy-{os.getuid()}"


def test_group_or_world_access_is_refused(tmp_path):
    d = tmp_path / "tailproxy"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(RunDirError, match="mode 0755; it must be 0700"):
        rundir.user_runtime_dir(_env(tmp_path))


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory of another user needs root")
def test_another_users_directory_is_refused(tmp_path):
    d = tmp_path / "tailproxy"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(RunDirError, match="owned by uid 65534, not by you"):
        rundir.user_runtime_dir(_env(tmp_path))


def _planted_link_to_a_dir_with_a_socket(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(victim / "123.sock"))    # bound, never listening: looks like a dead run's socket
    s.close()
    (tmp_path / "xdg").mkdir()
    (tmp_path / "xdg" / "tailproxy").symlink_to(victim)
    return victim


def test_a_planted_symlink_is_refused_not_followed(tmp_path):
    _planted_link_to_a_dir_with_a_socket(tmp_path)
    with pytest.raises(RunDirError, match="symbolic link"):
        rundir.user_runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path / "xdg")})


def test_ps_refuses_a_planted_symlink_in_one_line_and_deletes_nothing(tmp_path):
    victim = _planted_link_to_a_dir_with_a_socket(tmp_path)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    cp = subprocess.run([sys.executable, "-m", "tailproxy", "ps"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 1
    assert "Traceback" not in cp.stderr and cp.stderr.count("\n") == 1, cp.stderr
    assert "symbolic link" in cp.stderr
    assert (victim / "123.sock").exists()


def test_run_dir_is_inside_the_user_dir_with_an_owner_record(short_tmp):
    path = rundir.create_run_dir(_env(short_tmp))
    assert os.path.dirname(path) == str(short_tmp / "tailproxy")
    assert os.path.basename(path).startswith("tailproxy-")
    assert os.lstat(path).st_mode & 0o777 == 0o700
    pid, started = open(os.path.join(path, "owner")).read().split()
    assert int(pid) == os.getpid() and started == rundir._start_time(os.getpid())


def _dead_process_record() -> str:
    p = subprocess.Popen(["true"])
    p.wait()
    return f"{p.pid} {rundir._start_time(os.getpid())}\n"


def test_stale_run_dirs_are_removed_live_ones_kept(short_tmp):
    base = rundir.user_runtime_dir(_env(short_tmp))
    live = rundir.create_run_dir(_env(short_tmp))
    stale = os.path.join(base, "tailproxy-deadbeef")
    os.mkdir(stale, 0o700)
    open(os.path.join(stale, "owner"), "w").write(_dead_process_record())
    open(os.path.join(stale, "channel.sock"), "w").close()
    reused = os.path.join(base, "tailproxy-reused00")   # our pid, another start time: pid reuse
    os.mkdir(reused, 0o700)
    open(os.path.join(reused, "owner"), "w").write(f"{os.getpid()} 1\n")
    assert sorted(rundir.remove_stale_run_dirs(base)) == ["tailproxy-deadbeef",
                                                          "tailproxy-reused00"]
    assert os.path.isdir(live) and not os.path.exists(stale) and not os.path.exists(reused)


def test_stale_cleanup_never_follows_a_link(tmp_path):
    base = rundir.user_runtime_dir(_env(tmp_path))
    target = tmp_path / "precious"
    target.mkdir()
    (target / "owner").write_text(_dead_process_record())
    (target / "keep").write_text("x")
    os.symlink(target, os.path.join(base, "tailproxy-link0000"))
    assert rundir.remove_stale_run_dirs(base) == []
    assert (target / "keep").exists()


def test_a_runtime_dir_too_long_for_unix_sockets_is_refused_clearly(tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    with pytest.raises(RunDirError, match="too long a path for unix sockets"):
        rundir.create_run_dir({"XDG_RUNTIME_DIR": str(deep)})
