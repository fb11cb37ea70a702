"""Export-mode hooks (bind/listen/close) of libtailproxy.so, with the real proxy's notices."""
import re
import time

import pytest

EXPORT = {"TAILPROXY_EXPORT_LISTENERS": "1"}


def notices(proxy, port, proto="tcp"):
    text = open(proxy.log_path, errors="replace").read()
    return re.findall(rf"tailproxy: (LISTEN|UNLISTEN) {proto}[46] port {port} pid \d+", text)


def wait_notices(proxy, port, want):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = notices(proxy, port)
        if got == want:
            return got
        time.sleep(0.05)
    return notices(proxy, port)


@pytest.mark.parametrize("case, port", [("v4", 18301), ("v6", 18302), ("mapped", 18303)])
def test_bind_is_held_to_loopback_and_notices_sent(run, proxy, case, port):
    out = run.run("test_listen", case, port, env=EXPORT).stdout
    assert f"port {port}" in out
    assert wait_notices(proxy, port, ["LISTEN", "UNLISTEN"]) == ["LISTEN", "UNLISTEN"]


def test_listen_without_bind_takes_loopback(run, proxy):
    out = run.run("test_listen", "unbound", env=EXPORT).stdout
    port = int(out.split()[-1])
    assert wait_notices(proxy, port, ["LISTEN", "UNLISTEN"]) == ["LISTEN", "UNLISTEN"]


def test_port_zero_reports_the_kernels_choice(run, proxy):
    out = run.run("test_listen", "v4", 0, env=EXPORT).stdout
    port = int(out.split()[-1])
    assert port != 0 and wait_notices(proxy, port, ["LISTEN", "UNLISTEN"]) == ["LISTEN", "UNLISTEN"]


def test_udp_untouched(run):
    run.run("test_listen", "udp", env=EXPORT)


def test_udp_server_held_to_loopback_and_announced(run, proxy):
    """A UDP socket bound to a fixed port is a server: held to loopback, LISTEN with the UDP
    flag (no UNLISTEN: the exporter watches /proc/net/udp)."""
    assert "port 18305" in run.run("test_listen", "udpserver", 18305, env=EXPORT).stdout
    deadline = time.monotonic() + 5
    while notices(proxy, 18305, "udp") != ["LISTEN"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notices(proxy, 18305, "udp") == ["LISTEN"]


def test_export_mode_off_leaves_bind_alone(run, proxy):
    run.run("test_listen", "off", 18304)
    time.sleep(0.2)
    assert notices(proxy, 18304) == []


def test_errno_of_failing_calls(run):
    run.run("test_listen", "badfd", env=EXPORT)
