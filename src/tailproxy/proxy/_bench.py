"""Relay throughput benchmark: ``python -m tailproxy.proxy._bench [MiB]``.

A helper process sends N MiB over loopback TCP to the relay (this process,
asyncio, :func:`relay.relay`) which forwards them over loopback TCP back to
the helper's receiving thread. Reports Gbit/s of one stream.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import sys
import threading
import time

from .relay import relay


def _peer(relay_in_port: int, sink_port: int, total: int, q) -> None:
    got = [0]

    def receive():
        s = socket.create_connection(("127.0.0.1", sink_port))
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        n = 0
        while True:
            k = s.recv_into(mv)
            if not k:
                break
            n += k
        got[0] = n
        s.close()

    t = threading.Thread(target=receive)
    t.start()
    s = socket.create_connection(("127.0.0.1", relay_in_port))
    chunk = b"x" * (1 << 20)
    t0 = time.perf_counter()
    left = total
    while left > 0:
        k = min(left, len(chunk))
        s.sendall(chunk[:k] if k < len(chunk) else chunk)
        left -= k
    s.shutdown(socket.SHUT_WR)
    t.join()
    dt = time.perf_counter() - t0
    s.close()
    q.put((got[0], dt))


async def _main(total: int) -> None:
    loop = asyncio.get_running_loop()
    lin = socket.create_server(("127.0.0.1", 0))
    lsink = socket.create_server(("127.0.0.1", 0))
    lin.setblocking(False)
    lsink.setblocking(False)
    q = mp.Queue()
    p = mp.Process(target=_peer, args=(lin.getsockname()[1], lsink.getsockname()[1], total, q))
    p.start()
    a, _ = await loop.sock_accept(lin)
    b, _ = await loop.sock_accept(lsink)
    res = await relay(a, b)
    got, dt = await loop.run_in_executor(None, q.get)
    p.join()
    lin.close()
    lsink.close()
    print(f"relayed {got / 2**20:.0f} MiB in {dt:.3f}s: {got * 8 / dt / 1e9:.2f} Gbit/s "
          f"(up={res.up} down={res.down} reason={res.reason})")


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    asyncio.run(_main(mib << 20))


if __name__ == "__main__":
    main()
