"""A plain UDP client, run under tailproxy by test_udp_preload.py: it knows nothing of tailproxy.
Each check prints one JSON line {"check": name, ...}; the test judges the values.

usage: udp_probe.py CHECK HOST PORT [EXTRA]
"""
import asyncio
import errno
import json
import socket
import sys


def out(**kw):
    print(json.dumps(kw), flush=True)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def exchange(s, payload, dst=None, tries=5):
    """One datagram there and back (sent again if UDP lost it); (data, source)."""
    s.settimeout(2)
    for _ in range(tries):
        if dst is None:
            s.send(payload)
        else:
            s.sendto(payload, dst)
        try:
            return s.recvfrom(70000)
        except socket.timeout:
            continue
    raise SystemExit(f"no echo for {len(payload)} bytes")


def connected(host, port):
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        data, src = exchange(s, b"connected " + host.encode())
        s.send(b"plain recv")
        s.settimeout(2)
        plain = s.recv(100)
        out(check="connected", data=data.decode(), src=list(src[:2]), peer=list(s.getpeername()[:2]),
            plain=plain.decode())


def unconnected(host, port):
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        data, src = exchange(s, b"unconnected", (host, port))
        # sendmsg/recvmsg too
        s.sendmsg([b"by ", b"sendmsg"], [], 0, (host, port))
        s.settimeout(2)
        msg, _anc, _fl, msrc = s.recvmsg(100)
        out(check="unconnected", data=data.decode(), src=list(src[:2]), msg=msg.decode(),
            msrc=list(msrc[:2]))


def mapped(host, port):
    """An IPv6 socket sending to the IPv4-mapped form of host."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        dst = ("::ffff:" + host, port)
        data, src = exchange(s, b"mapped", dst)
        s.connect(dst)
        out(check="mapped", data=data.decode(), src=list(src[:2]), peer=list(s.getpeername()[:2]))


def by_name(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        data, src = exchange(s, b"by name")
        out(check="by_name", data=data.decode(), src=list(src[:2]), peer=list(s.getpeername()[:2]))


def sizes(host, port):
    """The largest datagram the tailnet carries whole crosses; one byte more is EMSGSIZE."""
    limit = 1252 if family_of(host) == socket.AF_INET else 1232
    res = {}
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        data, _ = exchange(s, b"L" * limit, (host, port))
        res["largest"] = len(data)
        try:
            s.sendto(b"B" * (limit + 1), (host, port))
            res["sendto_big"] = "sent"
        except OSError as e:
            res["sendto_big"] = errno.errorcode[e.errno]
        s.connect((host, port))
        try:
            s.send(b"B" * (limit + 1))
            res["send_big"] = "sent"
        except OSError as e:
            res["send_big"] = errno.errorcode[e.errno]
        data, _ = exchange(s, b"still there")
        res["after"] = data.decode()
    out(check="sizes", limit=limit, **res)


def refused(host, port):
    """A connected socket to a closed port: ECONNREFUSED, or nothing (a drop)."""
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
        except OSError as e:
            out(check="refused", outcome=errno.errorcode[e.errno])
            return
        s.settimeout(1)
        outcome = "timeout"
        for _ in range(4):
            try:
                s.send(b"anyone?")
                s.recv(100)
                outcome = "answered"
                break
            except socket.timeout:
                continue
            except OSError as e:
                outcome = errno.errorcode[e.errno]
                break
        out(check="refused", outcome=outcome)


def nonblocking(host, port):
    """asyncio's datagram transport: a non-blocking socket driven by epoll."""
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if not got.done():
                    got.set_result((data, addr))

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
        try:
            for _ in range(5):
                transport.sendto(b"asyncio")
                try:
                    data, addr = await asyncio.wait_for(asyncio.shield(got), 2)
                    break
                except TimeoutError:
                    continue
            else:
                raise SystemExit("no echo in asyncio")
            sock = transport.get_extra_info("socket")
            out(check="nonblocking", data=data.decode(), src=list(addr[:2]),
                timeout=sock.gettimeout())
        finally:
            transport.close()
    asyncio.run(main())


CHECKS = {f.__name__: f for f in (connected, unconnected, mapped, by_name, sizes, refused,
                                  nonblocking)}

if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        CHECKS[name](sys.argv[2], int(sys.argv[3]))
