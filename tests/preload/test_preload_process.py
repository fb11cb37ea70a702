"""fork, exec, threads, close_range (preload/tests/test_process.c)."""
import pytest

from preload_env import V4, V6


@pytest.mark.parametrize("ip", [V4, V6])
def test_fork_child_proxied(run, ip):
    run.run("test_process", "fork", ip)


@pytest.mark.parametrize("ip", [V4, V6])
def test_exec_grandchild_proxied(run, ip):
    run.run("test_process", "exec", ip)


def test_200_threads_at_once(run):
    run.run("test_process", "threads", V4, 200, timeout=120)


def test_close_range_then_connect(run):
    run.run("test_process", "closerange", V4)


@pytest.mark.parametrize("order", ["early-first", "tailproxy-first"])
def test_connect_from_another_librarys_constructor(run, order):
    """The hooks resolve the real calls lazily: a constructor that runs before ours works."""
    early = f"{run.testbin}/lib_early.so"
    *asan, lib = run.preload_value().split(":")     # an ASan runtime must stay first
    libs = asan + ([early, lib] if order == "early-first" else [lib, early])
    r = run.run("test_connect", "udp", V4,
                env={"LD_PRELOAD": ":".join(libs), "TP_EARLY_IP": V4})
    assert "early: ok" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("ip", [V4, V6])
def test_connect_from_signal_handler(run, ip):
    run.run("test_process", "sighandler", ip, timeout=120)
