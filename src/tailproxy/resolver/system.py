"""Resolution the way this host would do it (no exit node, no --dns=tailnet): glibc in the proxy
process (which has no preload), and raw queries forwarded to the nameservers of resolv.conf."""
from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import struct

import dns.flags
import dns.message
import dns.rcode

from . import dnsmsg

_GAI_ERRNO = {socket.EAI_NONAME: errno.ENOENT, socket.EAI_AGAIN: errno.EAGAIN,
              socket.EAI_FAIL: errno.EIO}
for _n, _e in (("EAI_NODATA", errno.ENODATA), ("EAI_ADDRFAMILY", errno.ENODATA)):
    if hasattr(socket, _n):
        _GAI_ERRNO[getattr(socket, _n)] = _e


class ResolvConf:
    def __init__(self, path: str = "/etc/resolv.conf"):
        self.path = path
        self._sig = None
        self.nameservers: list[str] = []
        self.search: list[str] = []
        self.ndots, self.timeout, self.attempts = 1, 5.0, 2

    def load(self) -> "ResolvConf":
        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            sig = None
        if sig == self._sig:
            return self
        ns, search, ndots, timeout, attempts = [], [], 1, 5.0, 2
        try:
            with open(self.path) as f:
                for line in f:
                    p = line.split("#", 1)[0].split(";", 1)[0].split()
                    if not p:
                        continue
                    if p[0] == "nameserver" and len(p) > 1 and len(ns) < 3:
                        ns.append(p[1])
                    elif p[0] in ("search", "domain"):
                        search = p[1:]
                    elif p[0] == "options":
                        for o in p[1:]:
                            k, _, v = o.partition(":")
                            if k == "ndots" and v.isdigit():
                                ndots = min(int(v), 15)
                            elif k == "timeout" and v.isdigit():
                                timeout = float(max(1, min(int(v), 30)))
                            elif k == "attempts" and v.isdigit():
                                attempts = max(1, min(int(v), 5))
        except OSError:
            pass
        self.nameservers = ns or ["127.0.0.1"]
        self.search, self.ndots, self.timeout, self.attempts = search, ndots, timeout, attempts
        self._sig = sig
        return self

    def candidates(self, name: str) -> list[str]:
        """res_search's order of names to try."""
        if name.endswith("."):
            return [name.rstrip(".")]
        tried = [f"{name}.{d}" for d in self.search]
        return [name] + tried if name.count(".") >= self.ndots else tried + [name]


class SystemResolver:
    def __init__(self, resolv_conf: str = "/etc/resolv.conf"):
        self.conf = ResolvConf(resolv_conf)

    async def getaddrinfo(self, name: bytes, version: int) -> tuple[int, list[str], str]:
        """(errno or 0, addresses in glibc's order, canonical name)."""
        fam = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}[version]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, family=fam, type=socket.SOCK_STREAM,
                                           flags=socket.AI_CANONNAME)
        except socket.gaierror as e:
            return _GAI_ERRNO.get(e.errno, errno.EIO), [], ""
        except (UnicodeError, ValueError):
            return errno.ENOENT, [], ""
        addrs, canon = [], ""
        for _f, _t, _p, cn, sa in infos:
            canon = canon or cn
            ip = sa[0].split("%", 1)[0]
            if ip not in addrs:
                addrs.append(ip)
        return (0 if addrs else errno.ENODATA), addrs, canon

    async def gethostbyaddr(self, ip: str) -> tuple[int, str, list[str]]:
        loop = asyncio.get_running_loop()
        try:
            name, aliases, _ = await loop.run_in_executor(None, socket.gethostbyaddr, ip)
        except socket.herror as e:
            return (errno.EAGAIN if e.errno == 2 else errno.ENOENT), "", []
        except (socket.gaierror, OSError):
            return errno.ENOENT, "", []
        return 0, name, list(aliases)

    async def forward(self, q: dns.message.Message, raw: bytes, search: bool) -> bytes:
        """Send the query to resolv.conf's nameservers (res_send-like: UDP, TCP on truncation)."""
        conf = self.conf.load()
        qn = q.question[0]
        qname = dnsmsg.name_text(qn.name)
        names = conf.candidates(qname) if search else [qname]
        last = None
        for name in names:
            if name == qname:
                msg = raw
            else:
                try:
                    m = dns.message.make_query(dnsmsg.to_name(name), qn.rdtype, use_edns=False)
                except dnsmsg.ERRORS:
                    continue
                m.id, m.flags = q.id, q.flags & dns.flags.RD
                msg = m.to_wire()
            ans = await self._send(msg, conf)
            if ans is None:
                continue
            last = ans
            try:
                a = dns.message.from_wire(ans)
            except dnsmsg.ERRORS:
                continue
            if a.rcode() == dns.rcode.NOERROR and a.answer:
                break
        if last is None:
            return dnsmsg.response(q, dns.rcode.SERVFAIL).to_wire(max_size=65535)
        return dnsmsg.with_id(last, q.id)

    async def _send(self, msg: bytes, conf: ResolvConf) -> bytes | None:
        qid = random.getrandbits(16)
        msg = struct.pack("!H", qid) + msg[2:]
        for _ in range(conf.attempts):
            for ns in conf.nameservers:
                try:
                    ans = await asyncio.wait_for(_udp(ns, msg, qid), conf.timeout)
                except (OSError, asyncio.TimeoutError):
                    continue
                if len(ans) >= 4 and ans[2] & 0x02:          # truncated: again over TCP
                    try:
                        ans = await asyncio.wait_for(_tcp(ns, msg), conf.timeout)
                    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                        continue
                return ans
        return None


async def _udp(ns: str, msg: bytes, qid: int) -> bytes:
    loop = asyncio.get_running_loop()
    fam = socket.AF_INET6 if ":" in ns else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, (ns, 53))
        await loop.sock_sendall(s, msg)
        while True:
            ans = await loop.sock_recv(s, 65535)
            if len(ans) >= 12 and struct.unpack_from("!H", ans)[0] == qid:
                return ans
    finally:
        s.close()


async def _tcp(ns: str, msg: bytes) -> bytes:
    r, w = await asyncio.open_connection(ns, 53)
    try:
        w.write(struct.pack("!H", len(msg)) + msg)
        await w.drain()
        n = struct.unpack("!H", await r.readexactly(2))[0]
        return await r.readexactly(n)
    finally:
        w.close()
