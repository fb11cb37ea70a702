"""Many connections at once at the common soft fd limit of 1024 (issue 14, item 6): every one
either works or fails at once with a clear errno, nothing hangs, and the program's event loop is
never frozen. --no-tailnet to a server on this host's own non-loopback address (the preload
passes loopback straight through), so the proxy's channel path is what is measured."""
import json
import resource
import subprocess
import sys

import pytest

from helpers import py, readline, tailproxy_argv

N = 2000
SOFT = 1024

ECHO_SERVER = """
    import asyncio, resource, sys
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    async def echo(r, w):
        try:
            while data := await r.read(4096):
                w.write(data); await w.drain()
        except ConnectionError:
            pass
        w.close()
    async def main():
        srv = await asyncio.start_server(echo, "0.0.0.0", 0, backlog=4096)
        print(srv.sockets[0].getsockname()[1], flush=True)
        await srv.serve_forever()
    asyncio.run(main())
"""

LOAD = """
    import asyncio, errno, json, socket, sys, time
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tried = [0]
    everyone_tried = asyncio.Event()
    connect_calls = []          # how long each connect() call took (the hook runs inside it)
    def tried_one():
        tried[0] += 1
        if tried[0] == n:
            everyone_tried.set()
    async def writable(loop, s):
        fut = loop.create_future()
        loop.add_writer(s, fut.set_result, None)
        try:
            await fut
        finally:
            loop.remove_writer(s)
    async def connect(loop, s):
        t = time.perf_counter()
        err = s.connect_ex((host, port))
        connect_calls.append(time.perf_counter() - t)
        if err == errno.EINPROGRESS:
            await writable(loop, s)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, errno.errorcode.get(err, "?"))
    async def one():
        loop = asyncio.get_running_loop()
        t = time.monotonic()
        s = None
        try:
            s = socket.socket()
            s.setblocking(False)
            await asyncio.wait_for(connect(loop, s), 60)
            await loop.sock_sendall(s, b"ping")
            ok = await asyncio.wait_for(loop.sock_recv(s, 4), 60) == b"ping"
        except asyncio.TimeoutError:       # an OSError too: first
            tried_one()
            s.close()
            return "hung", time.monotonic() - t
        except OSError as e:
            tried_one()
            if s is not None:
                s.close()
            return errno.errorcode.get(e.errno, str(e.errno)), time.monotonic() - t
        took = time.monotonic() - t
        tried_one()
        await everyone_tried.wait()        # all open at the same time
        s.close()
        return ("ok" if ok else "bad-echo"), took
    async def ticker(stop, stalls):
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            stalls.append(now - last - 0.005)
            last = now
    async def main():
        stalls = []
        tick = asyncio.create_task(ticker(everyone_tried, stalls))   # while connecting
        t0 = time.monotonic()
        tasks = []
        for i in range(n):      # a few at a time, as a busy server would: the loop stays live
            tasks.append(asyncio.create_task(one()))
            if i % 10 == 9:
                await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        took = time.monotonic() - t0
        await tick
        out = {}
        for outcome, _ in results:
            out[outcome] = out.get(outcome, 0) + 1
        slowest_fail = max([d for o, d in results if o != "ok"], default=0)
        calls = sorted(connect_calls)
        print(json.dumps({"outcomes": out, "max_connect_call": calls[-1],
                          "p99_connect_call": calls[len(calls) * 99 // 100],
                          "connect_calls_over_100ms": sum(c > 0.1 for c in calls),
                          "max_loop_stall": max(stalls), "took": took,
                          "slowest_failure": slowest_fail}))
    asyncio.run(main())
"""


def _own_non_loopback_ipv4() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        addr = line.split()[3].split("/")[0]
        if not addr.startswith("127."):
            return addr
    pytest.skip("no non-loopback IPv4 address on this host")


def _at_soft_limit():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))


def test_2000_connections_at_a_1024_fd_limit_work_or_fail_fast():
    host = _own_non_loopback_ipv4()
    server = subprocess.Popen(py(ECHO_SERVER), stdout=subprocess.PIPE, text=True)
    try:
        port = int(readline(server.stdout))
        cp = subprocess.run(tailproxy_argv("--no-tailnet", *py(LOAD), host, str(port), str(N)),
                            capture_output=True, text=True, timeout=240, preexec_fn=_at_soft_limit)
    finally:
        server.kill()
        server.wait()
    assert cp.returncode == 0, cp.stderr[-3000:]
    res = json.loads(cp.stdout.strip().splitlines()[-1])
    print(res, file=sys.stderr)
    outcomes = res["outcomes"]
    assert sum(outcomes.values()) == N
    assert set(outcomes) <= {"ok", "EMFILE"}, res          # no hang, no muddled errno
    assert outcomes.get("ok", 0) >= SOFT - 100, res        # the program's own limit is the bound
    assert res["slowest_failure"] < 1.0, res               # failures are immediate
    # No connect() call holds the program's event loop (it froze for 22 s inside one): 99% take
    # under 100 ms and none a noticeable time. (On this shared 2-core machine one descheduling
    # costs 0.1-0.2 s even without tailproxy, so the loop's own stall is reported, not asserted.)
    assert res["p99_connect_call"] < 0.1 and res["max_connect_call"] < 0.25, res


def test_the_program_keeps_its_own_fd_limit_and_tailproxy_raises_its_own():
    code = """
        import os, resource
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        for line in open(f"/proc/{os.getppid()}/limits"):
            if line.startswith("Max open files"):
                print(line.split()[3])
    """
    cp = subprocess.run(tailproxy_argv("--no-tailnet", *py(code)), capture_output=True,
                        text=True, timeout=60, preexec_fn=_at_soft_limit)
    assert cp.returncode == 0, cp.stderr
    program, tailproxy = cp.stdout.split()
    assert int(program) == SOFT
    assert int(tailproxy) == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
