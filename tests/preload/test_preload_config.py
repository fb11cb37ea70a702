"""What goes direct, what the library says (preload/tests/test_connect.c)."""
import re

import pytest

from preload_env import BYPASSED, V4, V6


def no_lines(r):
    assert "tailproxy:" not in r.stderr, r.stderr


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1",
                                "0.0.0.0", "::"])
def test_loopback_and_unspecified_go_direct(run, ip):
    no_lines(run.run("test_connect", "direct", ip, env={"TAILPROXY_VERBOSE": "1"}))


def test_bypass_cidrs_go_direct(run):
    env = {"TAILPROXY_BYPASS": "10.0.0.0/8, 198.18.0.2/32,2001:db8::/32",
           "TAILPROXY_VERBOSE": "1"}
    no_lines(run.run("test_connect", "direct", BYPASSED, env=env))
    no_lines(run.run("test_connect", "direct", V6, env=env))
    # outside the list: still proxied
    r = run.run("test_connect", "ok", V4, env=env)
    assert "tailproxy: connect" in r.stderr


def test_bad_bypass_entry_is_reported_and_skipped(run):
    env = {"TAILPROXY_BYPASS": "nonsense/99,198.18.0.2", "TAILPROXY_VERBOSE": "1"}
    r = run.run("test_connect", "direct", BYPASSED, env=env)
    assert "ignoring bad TAILPROXY_BYPASS entry 'nonsense/99'" in r.stderr


def test_udp_untouched(run):
    no_lines(run.run("test_connect", "udp", V4, env={"TAILPROXY_VERBOSE": "1"}))


def test_inert_without_tailproxy_socket(run):
    no_lines(run.run("test_connect", "direct", V4, channel=False, env={"TAILPROXY_VERBOSE": "1"}))


def test_dead_proxy_enetdown_and_one_line(run_noproxy):
    r = run_noproxy.run("test_connect", "netdown", V4)
    lines = [l for l in r.stderr.splitlines() if l.startswith("tailproxy:")]
    assert lines == [f"tailproxy: cannot reach the tailproxy proxy at {run_noproxy.channel} "
                     "(No such file or directory); connections cannot be made"], r.stderr


def test_verbose_one_line_per_connect(run):
    env = {"TAILPROXY_VERBOSE": "1"}
    r = run.run("test_connect", "ok", V4, env=env)
    lines = [l for l in r.stderr.splitlines() if l.startswith("tailproxy:")]
    assert len(lines) == 1 and re.fullmatch(
        r"tailproxy: connect fd \d+ to 198\.18\.0\.1:\d+: connected", lines[0]), r.stderr
    r = run.run("test_connect", "refused", V6, env=env)
    assert re.search(r"tailproxy: connect fd \d+ to \[2001:db8::1\]:\d+: "
                     r"Connection refused \(ECONNREFUSED\)", r.stderr), r.stderr
    r = run.run("test_nonblock", "ok", V4, "poll", env=env)
    assert re.search(r"to 198\.18\.0\.1:\d+: in progress", r.stderr), r.stderr
