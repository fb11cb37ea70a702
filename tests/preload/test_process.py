"""fork, exec, threads, close_range (preload/tests/test_process.c)."""
import pytest

from conftest import V4, V6


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
