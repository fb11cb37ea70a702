"""The launcher as a user sees it: exit statuses, messages, signals, warnings (--no-tailnet: these
tests make no connection at all)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import py, readline, run_tp, tailproxy_argv


def test_exit_status_passes_through():
    assert run_tp("--no-tailnet", "sh", "-c", "exit 7").returncode == 7
    assert run_tp("--no-tailnet", "true").returncode == 0


def test_command_not_found_is_127_with_message():
    cp = run_tp("--no-tailnet", "surely-not-a-command-xyz")
    assert cp.returncode == 127
    assert "surely-not-a-command-xyz: command not found" in cp.stderr


def test_not_executable_is_126_with_message(tmp_path):
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    cp = run_tp("--no-tailnet", str(f))
    assert cp.returncode == 126 and "permission denied" in cp.stderr


def test_signal_death_is_128_plus_n_with_message():
    cp = run_tp("--no-tailnet", "sh", "-c", "kill -9 $$")
    assert cp.returncode == 128 + 9
    assert "killed by SIGKILL" in cp.stderr


def test_double_dash_runs_a_program_named_like_a_subcommand(tmp_path):
    prog = tmp_path / "ps"
    prog.write_text("#!/bin/sh\necho i-am-the-program\n")
    prog.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    cp = run_tp("--no-tailnet", "--", "ps", env=env)
    assert cp.stdout.strip() == "i-am-the-program"


def test_sigterm_is_forwarded_and_status_passes(tmp_path):
    marker = tmp_path / "got"
    code = f"""
        import signal, sys, time
        def h(sig, frm):
            open({str(marker)!r}, "w").write(str(sig)); sys.exit(42)
        signal.signal(signal.SIGTERM, h)
        print("ready", flush=True)
        time.sleep(30)
    """
    p = subprocess.Popen(tailproxy_argv("--no-tailnet", *py(code)), stdout=subprocess.PIPE, text=True)
    assert readline(p.stdout).strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 42
    assert marker.read_text() == str(int(signal.SIGTERM))


REPORTER = """
    import signal, sys, time
    def h(sig, frm):
        print("got", signal.Signals(sig).name, flush=True)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, h)
    print("ready", flush=True)
    while True:
        time.sleep(60)
"""


def _reporter():
    p = subprocess.Popen(tailproxy_argv("--no-tailnet", *py(REPORTER)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert readline(p.stdout).strip() == "ready"
    return p


def test_sighup_and_sigquit_are_forwarded():
    p = _reporter()
    try:
        for sig in (signal.SIGHUP, signal.SIGQUIT):
            p.send_signal(sig)
            assert readline(p.stdout, 15).strip() == f"got {sig.name}"
        assert p.poll() is None                     # tailproxy itself carried on
    finally:
        os.killpg(p.pid, signal.SIGKILL)            # tailproxy and the program (own session)
        p.wait(10)


def test_first_interrupt_reaches_the_program_second_forces_shutdown():
    p = _reporter()
    p.send_signal(signal.SIGINT)
    assert readline(p.stdout, 15).strip() == "got SIGINT"      # the program saw the first
    assert p.poll() is None
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    status = p.wait(10)
    assert time.monotonic() - t < 5
    assert status == 128 + 9
    assert "second interrupt" in p.stderr.read()


@pytest.mark.tailnet
def test_static_binary_warning(testnet):
    # The testnet's pinned tailscale CLI is a static Go binary (CGO_ENABLED=0): with the
    # preload alone it cannot be reached (a warning); by default seccomp takes it (none).
    cp = run_tp("--no-tailnet", "--intercept", "preload", testnet["bin"]["tailscale"], "version")
    assert "statically linked" in cp.stderr
    assert cp.stderr.count("warning") == 1
    cp = run_tp("--no-tailnet", testnet["bin"]["tailscale"], "version")
    assert cp.returncode == 0 and "warning" not in cp.stderr, cp.stderr


def test_bad_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('exit_nod = "x"\n')
    cp = run_tp("--config", str(cfg), "true")
    assert cp.returncode == 2 and "unknown key 'exit_nod'" in cp.stderr


@pytest.mark.tailnet  # starts a node: only inside the testnet's namespaces
def test_missing_authkey_with_dead_control_is_clear(tmp_path):
    # No key, no state, and a control URL where nothing answers: a clear error, in time.
    cp = run_tp("--state-dir", str(tmp_path / "s"), "--control-url", "http://127.0.0.1:9",
                "--timeout", "4", "true", env={"TS_AUTHKEY": "", "TS_AUTH_KEY": ""}, timeout=30)
    assert cp.returncode == 1
    assert "cannot join the tailnet" in cp.stderr


def test_a_killed_runs_directory_is_removed_at_the_next_start(short_tmp):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(short_tmp))
    p = subprocess.Popen(tailproxy_argv("--no-tailnet", *py("print('ready', flush=True); "
                                                               "import time; time.sleep(60)")),
                         stdout=subprocess.PIPE, text=True, env=env)
    assert readline(p.stdout) == "ready\n"
    runs = [d for d in os.listdir(short_tmp / "tailproxy") if d.startswith("tailproxy-")]
    assert len(runs) == 1 and (short_tmp / "tailproxy" / runs[0] / "channel.sock").exists()
    p.kill()        # tailproxy cannot clean up after SIGKILL
    p.wait(10)
    assert (short_tmp / "tailproxy" / runs[0]).exists()
    assert run_tp("--no-tailnet", "true", env={"XDG_RUNTIME_DIR": str(short_tmp)}).returncode == 0
    assert not (short_tmp / "tailproxy" / runs[0]).exists()


@pytest.mark.parametrize("flag, env, profile, want", [
    ("flaghost", "envhost", "p", "flaghost"),
    (None, "envhost", "p", "envhost"),
    (None, "", "p", "profhost"),
    (None, "", None, "filehost"),
])
def test_precedence_flags_env_profile_file_through_the_cli(tmp_path, short_tmp, flag, env, profile, want):
    """What a run really uses, as `tailproxy ps` (run by the program itself) reports it."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('hostname = "filehost"\n[profiles.p]\nhostname = "profhost"\n')
    args = ["--config", str(cfg), "--no-tailnet"]
    args += ["--hostname", flag] if flag else []
    args += ["--profile", profile] if profile else []
    cp = run_tp(*args, sys.executable, "-m", "tailproxy", "ps",
                env={"XDG_RUNTIME_DIR": str(short_tmp), "TAILPROXY_HOSTNAME": env})
    assert cp.returncode == 0, cp.stderr
    rows = [line.split() for line in cp.stdout.splitlines()]
    assert rows[0][:2] == ["PID", "HOSTNAME"] and len(rows) == 2, cp.stdout
    assert rows[1][1] == want
