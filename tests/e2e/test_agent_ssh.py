"""A real daemonizing program on an agent (issue 16): `tailproxy ssh -f -N -L ...` returns to the
shell at once, the tunnel keeps working through the agent, and the agent ends after the tunnel
process does. The ssh server is OpenSSH's sshd in the peer's network namespace (loopback only,
reached over the tailnet through the peer's tailscaled), with throwaway keys."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import procs_mentioning, tailproxy_argv
from test_agent import AGENT, agent_pid, alive, ident, peer, wait_until  # noqa: F401 (fixtures)

pytestmark = pytest.mark.tailnet

SSHD_PORT = 2222


@pytest.fixture
def sshd(testnet, short_tmp):
    """sshd on 127.0.0.1:2222 in the peer's namespace; yields the client's private key path."""
    exe = "/usr/sbin/sshd"
    if not os.path.exists(exe):
        pytest.fail("sshd is missing (make deps installs openssh-server)")
    d = short_tmp / "sshd"
    d.mkdir(mode=0o700)
    for name in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    (d / "sshd_config").write_text(
        f"Port {SSHD_PORT}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
        f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nStrictModes no\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nLogLevel VERBOSE\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)     # its privilege separation dir
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen(["ip", "netns", "exec", testnet["peers"]["peer"]["netns"], exe,
                             "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "Server listening" in (d / "sshd.log").read_text()
                          or proc.poll() is not None, 20), "sshd did not start"
        assert proc.poll() is None, (d / "sshd.log").read_text()
        yield str(d / "id")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
        c.sendall(b"through the tunnel")
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(100):
            got += chunk
        return got


def test_ssh_f_tunnel_keeps_the_agent_and_the_launcher_returns_at_once(ident, peer, sshd,
                                                                      short_tmp):
    state, host = ident
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    forward = f"127.0.0.1:{local}:127.0.0.1:{peer['echo_port']}"
    ssh = ["ssh", "-f", "-N", "-L", forward, "-p", str(SSHD_PORT), "-i", sshd,
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", f"root@{peer['ipv4']}"]
    out = short_tmp / "tp.out"
    with open(out, "w") as f:      # files, not pipes: the daemon keeps what it inherited
        t0 = time.monotonic()
        cp = subprocess.run(tailproxy_argv("--state-dir", state, "--hostname", host,
                                           "--linger", "0", *ssh),
                            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **AGENT), timeout=90)
        took = time.monotonic() - t0
    assert cp.returncode == 0, out.read_text()
    print(f"tailproxy ssh -f returned after {took:.2f} s")
    tunnel = [p for p in procs_mentioning(forward) if p != os.getpid()]
    assert tunnel, "no ssh process holds the tunnel"
    pid = agent_pid(state)
    assert pid, "the agent stopped while the tunnel process runs"
    try:
        for _ in range(3):
            assert _echo(local) == b"through the tunnel"
            time.sleep(0.5)
        assert agent_pid(state) == pid
    finally:
        for p in tunnel:
            os.kill(p, signal.SIGTERM)
    # the tunnel has ended: the agent follows (linger 0, plus the settle and shutdown)
    assert wait_until(lambda: not alive(pid), 20), "the agent outlived the ssh tunnel"
