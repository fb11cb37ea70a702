"""The node binding against the local tailnet: real headscale, real tailscaled peers."""
import asyncio
import os
import socket
import subprocess
import time

import pytest

from tailproxy.node import DialFailed, Node, NodeConfig, NodeError, UpTimeout

pytestmark = pytest.mark.tailnet


@pytest.fixture(scope="module")
def node(testnet, tmp_path_factory):
    n = Node(NodeConfig(state_dir=str(tmp_path_factory.mktemp("node")), hostname="nodetest",
                        authkey=testnet["authkey"], control_url=testnet["control_url"]))
    t0 = time.monotonic()
    n.up(timeout=60)
    print(f"node up in {time.monotonic() - t0:.2f}s")
    yield n
    n.close()


async def echo_roundtrip(node, host, port, payload):
    sock = await node.dial(host, port, timeout=15)
    loop = asyncio.get_running_loop()
    try:
        send = asyncio.create_task(loop.sock_sendall(sock, payload))
        got = bytearray()
        while len(got) < len(payload):
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 30)
            assert chunk, "echo closed early"
            got += chunk
        await send
        return bytes(got)
    finally:
        sock.close()


def peer_targets(testnet):
    p = testnet["peers"]["peer"]
    short = p["fqdn"].split(".")[0]
    return [p["ipv4"], p["ipv6"], short, p["fqdn"], p["fqdn"].rstrip(".") + "."]


@pytest.mark.parametrize("size", [1, 16 << 20])
def test_dial_peer_every_way_echo_byte_exact(node, testnet, size):
    payload = os.urandom(size)
    port = testnet["peers"]["peer"]["echo_port"]
    for target in peer_targets(testnet):
        assert asyncio.run(echo_roundtrip(node, target, port, payload)) == payload, target


async def udp_roundtrips(node, host, port, datagrams):
    """Each datagram to the peer's UDP echo and back, one at a time (UDP may drop one: each is
    sent again, up to 5 times, until its echo comes)."""
    sock = await node.dial_udp(host, port, timeout=15)
    loop = asyncio.get_running_loop()
    got = []
    try:
        for d in datagrams:
            for _ in range(5):
                await loop.sock_sendall(sock, d)
                try:
                    got.append(await asyncio.wait_for(loop.sock_recv(sock, 70000), 2))
                    break
                except asyncio.TimeoutError:
                    continue
        return got
    finally:
        sock.close()


def test_udp_to_peer_every_way_datagrams_whole(node, testnet):
    port = testnet["peers"]["peer"]["udp_echo_port"]
    # up to the tailnet MTU (1280) less the IPv6 and UDP headers: larger datagrams would need
    # IP fragments, which do not cross the userspace netstacks (see Node.dial_udp)
    datagrams = [os.urandom(n) for n in (1, 512, 1200, 1232)]
    for target in peer_targets(testnet):
        assert asyncio.run(udp_roundtrips(node, target, port, datagrams)) == datagrams, target


def test_node_ips_are_tailnet_addresses(node):
    ips = node.ips()
    assert ips[0].startswith("100.") and ":" in ips[1]


def test_status_lists_peer_and_exit_option(node, testnet):
    peers = node.localapi.status()["Peer"].values()
    by_name = {p["HostName"]: p for p in peers}
    assert "peer" in by_name and "exit" in by_name
    assert by_name["exit"]["ExitNodeOption"] is True
    assert not by_name["peer"].get("ExitNodeOption")


def test_dial_closed_port_is_refused(node, testnet):
    with pytest.raises(DialFailed) as e:
        asyncio.run(node.dial(testnet["peers"]["peer"]["ipv4"], 1, timeout=10))
    import errno
    assert e.value.errno == errno.ECONNREFUSED


@pytest.mark.parametrize("where", ["loopback", "client LAN address"])
def test_dial_off_the_tailnet_is_refused_not_sent_from_the_host(node, testnet, where):
    """tsnet's dialer would dial an address no peer covers from the host itself: the node
    refuses it (ENETUNREACH), and nothing reaches a listener at that address."""
    import errno
    host = "127.0.0.1" if where == "loopback" else testnet["client"]["ipv4"]
    with socket.create_server((host, 0)) as ln:
        ln.settimeout(0.5)
        # In its first seconds a node retries what it cannot route yet (its peers may not be
        # known), until the dial times out; after that the refusal is immediate.
        deadline = time.monotonic() + 20
        while True:
            with pytest.raises(DialFailed) as e:
                asyncio.run(node.dial(host, ln.getsockname()[1], timeout=3))
            if e.value.errno != errno.ETIMEDOUT or time.monotonic() > deadline:
                break
        assert e.value.errno == errno.ENETUNREACH, e.value
        with pytest.raises(socket.timeout):
            ln.accept()


def test_listen_accepts_from_peer_and_knows_who(node, testnet):
    p = testnet["peers"]["peer"]

    async def scenario():
        listener = await node.listen(7788)
        try:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", p["netns"], testnet["bin"]["tailscale"],
                f"--socket={p['socket']}", "nc", node.ips()[0], "7788",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            proc.stdin.write(b"hello from peer\n")
            await proc.stdin.drain()
            conn, who = await asyncio.wait_for(listener.accept(), 20)
            loop = asyncio.get_running_loop()
            data = await asyncio.wait_for(loop.sock_recv(conn, 100), 10)
            await loop.sock_sendall(conn, b"hi peer\n")
            reply = await asyncio.wait_for(proc.stdout.readline(), 10)
            conn.close()
            proc.kill()
            await proc.wait()
            return data, who, reply
        finally:
            await listener.close()

    data, who, reply = asyncio.run(scenario())
    assert data == b"hello from peer\n"
    assert reply == b"hi peer\n"
    assert who[0] in (p["ipv4"], p["ipv6"])


def test_whois_names_peer(node, testnet):
    who = node.localapi.whois(testnet["peers"]["peer"]["ipv4"])
    assert who["Node"]["Name"].startswith("peer.")


def test_up_against_dead_control_fails_in_time(tmp_path):
    # 198.18.0.250 is on the test LAN but nothing listens there.
    n = Node(NodeConfig(state_dir=str(tmp_path / "s"), hostname="deadctl", authkey="tskey-x",
                        control_url="https://198.18.0.250"))
    t0 = time.monotonic()
    with pytest.raises(UpTimeout) as e:
        n.up(timeout=5)
    took = time.monotonic() - t0
    assert took < 9, took
    assert "198.18.0.250" in str(e.value) and "tskey-x" not in str(e.value)


def test_relogin_when_state_belongs_to_another_control(testnet, tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    (state / "tailproxy-node.json").write_text('{"control_url": "https://other.example"}')
    (state / "tailscaled.state").write_text("{}")
    with pytest.raises(NodeError, match="belongs to the control server https://other.example"):
        Node(NodeConfig(state_dir=str(state), control_url=testnet["control_url"])).up(timeout=5)
    n = Node(NodeConfig(state_dir=str(state), hostname="relogin", authkey=testnet["authkey"],
                        control_url=testnet["control_url"]))
    try:
        n.up(timeout=60)
        assert n.ips()
    finally:
        n.close()
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"


def test_authkey_never_in_node_log_or_argv(node, testnet):
    path = os.path.join(node.config.state_dir, "node.log")
    assert node.log_path == path
    log = open(path, errors="replace").read()
    assert log, "the node's log is empty"      # a missing log would make the check below vacuous
    assert testnet["authkey"] not in log
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert testnet["authkey"] not in out
