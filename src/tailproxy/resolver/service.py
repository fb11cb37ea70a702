"""The name service of one tailproxy run (docs/NAMES.md).

Order for a name: /etc/hosts, then tailnet names (from the node's status), then
- with an exit node in use (mode "auto") or mode "tailnet": a placeholder address; a connect to
  it is dialled by name through the tailnet (:mod:`.dialer`), so the name is resolved on the exit
  node's side and no query leaves this host;
- otherwise the system's resolver, in the proxy process.
Answers come from the proxy's memory (one local round trip for the program) except in the
last case, which costs what the system's lookup costs.
"""
from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Callable

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from ..proxy import channel_proto as cp
from . import dnsmsg
from .hosts import HostsFile
from .nametable import MAX_RECORDS, Answer
from .placeholders import PlaceholderMap, PlaceholdersFull
from .system import SystemResolver
from .tailnet import TailnetNames

MODES = ("auto", "tailnet")
LOOKUP_SOURCES = ("hosts", "magicdns", "placeholder", "system")
TTL = 60          # seconds, in DNS answers we build

_RCODE = {errno.ENOENT: dns.rcode.NXDOMAIN, errno.ENODATA: dns.rcode.NOERROR}
IN = dns.rdataclass.IN
T = dns.rdatatype


@dataclass
class Result:
    err: int = 0                       # 0, ENOENT (no such name), ENODATA (no address of that
    addrs: list[str] = field(default_factory=list)   # family), EAGAIN, EIO
    flags: int = 0                     # cp.RES_*
    canon: str = ""
    aliases: list[str] = field(default_factory=list)


def valid_name(name: str) -> bool:
    n = name[:-1] if name.endswith(".") else name
    if not n or len(n) > 253:
        return False
    for label in n.split("."):
        if not 0 < len(label.encode("utf-8", "surrogateescape")) < 64:
            return False
        if any(c.isspace() or c in "\0/\\" for c in label):
            return False
    return True


class NameService:
    """``status``: sync callable returning a LocalAPI status dict (None: no tailnet).
    ``dns_query``: sync callable (name, type name) -> DNS answer bytes through the node (used for
    record types other than A/AAAA/PTR in tailnet mode). ``mode``: "auto" (tailnet resolution
    while an exit node is in use) or "tailnet" (always)."""

    def __init__(self, *, status: Callable[[], dict] | None = None,
                 dns_query: Callable[[str, str], bytes] | None = None, mode: str = "auto",
                 placeholders: PlaceholderMap | None = None, hosts: HostsFile | None = None,
                 system: SystemResolver | None = None, status_ttl: float = 2.0,
                 log: Callable[[str], None] | None = None):
        if mode not in MODES:
            raise ValueError(f"bad DNS mode {mode!r}")
        self.status, self.dns_query, self.mode = status, dns_query, mode
        self.placeholders = PlaceholderMap() if placeholders is None else placeholders
        self.hosts = HostsFile() if hosts is None else hosts
        self.system = SystemResolver() if system is None else system
        self.status_ttl = status_ttl
        self.log = log or (lambda msg: None)
        self._tn: TailnetNames | None = None if status else TailnetNames()
        self._tn_at = 0.0
        self._refreshing: asyncio.Task | None = None
        # getaddrinfo answers by where they came from (tailproxy top, the metrics)
        self.by_source = {s: 0 for s in LOOKUP_SOURCES}
        self.stats = {"resolve": 0, "reverse": 0, "query": 0, "placeholder": 0,
                      "placeholders_full": 0}
        # told after a new tailnet snapshot was loaded (the name table republishes)
        self.on_change: Callable[[], None] = lambda: None
        self._hosts_cache: tuple = (None, None)     # (hosts signature, its known answers)

    # ------------------------------------------------------------ tailnet snapshot
    async def refresh(self) -> None:
        """Read the node's status now (the launcher calls this once at start)."""
        if self.status is None:
            return
        try:
            st = await asyncio.to_thread(self.status)
            self._tn = TailnetNames.from_status(st)
            self._tn_at = time.monotonic()
            self.on_change()
        except Exception as e:          # keep the last snapshot; retried on the next lookup
            self.log(f"name service: cannot read the node's status: {e}")
            if self._tn is None:
                self._tn = TailnetNames()

    async def _tailnet(self) -> TailnetNames:
        if self._tn is None:
            await self.refresh()
        elif self.status is not None and time.monotonic() - self._tn_at > self.status_ttl:
            if self._refreshing is None or self._refreshing.done():
                # stale-while-revalidate: this lookup is not held up by the LocalAPI call
                self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
        return self._tn

    def tailnet_dns(self, tn: TailnetNames) -> bool:
        return self.mode == "tailnet" or tn.exit_node_in_use

    def known_answers(self, placeholders: int = 0) -> list[Answer]:
        """What resolve() answers from memory alone, for the preload's name table: every name of
        the hosts file, then the tailnet's names the hosts file does not have, each for the
        families 0, 4 and 6 — the same answers, by the same order rules; then, while names go
        through the tailnet (an exit node in use, or mode "tailnet"), the placeholders of up to
        `placeholders` names most recently used, for the families they have one of. Names
        resolve() would refuse (invalid) or that are not ASCII (the preload compares bytes) are
        left out: the name service answers them."""
        out = list(self._hosts_answers())
        tn = self._tn or TailnetNames()
        seen = self.hosts.has
        for key, (fqdn, ips) in tn.names.items():
            if seen(key) or not (key.isascii() and valid_name(key)):
                continue
            for v in (0, 4, 6):
                addrs = tuple(i for i in ips if not v or (":" in i) == (v == 6))
                out.append(Answer(key, v, cp.RES_TAILNET, fqdn, addrs))
        if placeholders and self.tailnet_dns(tn):
            for key, a4, a6 in self.placeholders.recent(placeholders):
                if (seen(key) or key in tn.names or tn.under_suffix(key) or
                        not (key.isascii() and valid_name(key))):
                    continue
                for v, addr in ((0, a4), (4, a4), (6, a6)):
                    if addr is not None:
                        out.append(Answer(key, v, cp.RES_PLACEHOLDER, key, (addr,)))
        return out

    def _hosts_answers(self) -> tuple[Answer, ...]:
        """The hosts file's part of known_answers(), taken again only when the file changed, and
        no more than a name table holds (a hosts file of 100,000 blocked names is not turned
        into answers every two seconds)."""
        names = self.hosts.names()          # reads the file again if it changed
        sig = self.hosts.signature
        if self._hosts_cache[0] != sig or self._hosts_cache[1] is None:
            out: list[Answer] = []
            for key in names:
                if len(out) >= MAX_RECORDS:
                    break
                if not (key.isascii() and valid_name(key)):
                    continue
                for v in (0, 4, 6):
                    h = self.hosts.lookup(key, v)
                    if h is not None:
                        out.append(Answer(key, v, cp.RES_HOSTS, h.canon, tuple(h.addrs),
                                          tuple(h.aliases)))
            self._hosts_cache = (sig, tuple(out))
        return self._hosts_cache[1]

    # ------------------------------------------------------------ lookups
    async def resolve(self, name: bytes | str, version: int = 0, idn: bool = False) -> Result:
        self.stats["resolve"] += 1
        if isinstance(name, bytes):
            raw = name
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                text = name.decode("utf-8", "surrogateescape")
                if idn:
                    try:
                        text = text.encode("utf-8", "strict").decode("utf-8").encode("idna").decode()
                        raw = text.encode()
                    except UnicodeError:
                        return Result(errno.ENOENT)
        else:
            text, raw = name, name.encode("utf-8", "surrogateescape")
        if not valid_name(text):
            return Result(errno.ENOENT)
        h = self.hosts.lookup(text, version)
        if h is not None:       # a name the hosts file has (for either family) goes no further
            self.by_source["hosts"] += 1
            return Result(0 if h.addrs else errno.ENODATA, h.addrs, cp.RES_HOSTS, h.canon,
                          h.aliases)
        tn = await self._tailnet()
        hit = tn.lookup(text)
        if hit is not None:
            fqdn, ips = hit
            addrs = [i for i in ips if not version or (":" in i) == (version == 6)]
            self.by_source["magicdns"] += 1
            return Result(0 if addrs else errno.ENODATA, addrs, cp.RES_TAILNET, fqdn)
        if tn.under_suffix(text):
            self.by_source["magicdns"] += 1
            return Result(errno.ENOENT)          # not a peer: never asked anywhere else
        canon = text.rstrip(".")
        if self.tailnet_dns(tn):
            self.stats["placeholder"] += 1
            self.by_source["placeholder"] += 1
            try:
                addr = self.placeholders.get(canon, 6 if version == 6 else 4)
            except PlaceholdersFull:
                self.stats["placeholders_full"] += 1
                return Result(errno.EAGAIN)      # a temporary failure: programs retry
            return Result(0, [addr], cp.RES_PLACEHOLDER, canon.lower())
        self.by_source["system"] += 1
        err, addrs, cn = await self.system.getaddrinfo(raw, version)
        return Result(err, addrs, 0, cn or canon)

    async def reverse(self, ip: str) -> tuple[int, str, list[str]]:
        self.stats["reverse"] += 1
        a = ipaddress.ip_address(ip)
        if a.version == 6 and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        ip = str(a)
        name = self.placeholders.name_of(a)
        if name is not None:
            return 0, name, []
        if self.placeholders.contains(a):
            return errno.ENOENT, "", []
        tn = await self._tailnet()
        if ip in tn.by_ip:
            return 0, tn.by_ip[ip], []
        h = self.hosts.reverse(ip)
        if h is not None:
            return 0, h[0], list(h[1])
        if self.tailnet_dns(tn):
            ans = await self._node_query(dnsmsg.ptr_name(ip), "PTR")
            if ans is None:
                return errno.EAGAIN, "", []
            try:
                a = dns.message.from_wire(ans)
            except dnsmsg.ERRORS:
                return errno.EIO, "", []
            names = [dnsmsg.name_text(rd.target) for rrset in a.answer if rrset.rdtype == T.PTR
                     for rd in rrset]
            if names:
                return 0, names[0], names[1:]
            return (errno.ENOENT if a.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR)
                    else errno.EAGAIN), "", []
        return await self.system.gethostbyaddr(ip)

    async def _node_query(self, name: str, qtype: str) -> bytes | None:
        if self.dns_query is None:
            return None
        try:
            return await asyncio.to_thread(self.dns_query, name, qtype)
        except Exception as e:
            self.log(f"name service: dns-query {name} {qtype} through the node: {e}")
            return None

    async def query(self, raw: bytes, search: bool = False) -> bytes:
        """Answer a DNS query message (res_query & co., UDP/TCP port 53)."""
        self.stats["query"] += 1
        try:
            q = dnsmsg.read_query(raw)
        except dnsmsg.ERRORS:
            return dnsmsg.error_answer(raw, dns.rcode.FORMERR)
        ans = await self._answer(q, raw, search)
        return ans if isinstance(ans, bytes) else ans.to_wire(max_size=65535)

    async def _answer(self, q: dns.message.Message, raw: bytes, search: bool):
        """The answer to q: a dns.message.Message we built, or bytes from elsewhere."""
        question = q.question[0]
        qtype, qname = question.rdtype, dnsmsg.name_text(question.name)
        if q.opcode() != dns.opcode.QUERY:
            return dnsmsg.response(q, dns.rcode.NOTIMP)
        if question.rdclass != IN:
            return dnsmsg.response(q, dns.rcode.REFUSED)
        if qtype in (T.A, T.AAAA):
            r = await self.resolve(qname, 4 if qtype == T.A else 6)
            if r.err and r.err not in _RCODE:
                return dnsmsg.response(q, dns.rcode.SERVFAIL)
            ans = dnsmsg.response(q, _RCODE.get(r.err, dns.rcode.NOERROR), aa=bool(r.flags))
            if r.err:
                return ans
            owner = question.name
            if r.canon and r.canon.rstrip(".").lower() != qname.lower().rstrip(".") and not r.flags:
                try:
                    target = dnsmsg.to_name(r.canon)      # as the server said
                except dnsmsg.ERRORS:
                    return dnsmsg.response(q, dns.rcode.SERVFAIL)
                ans.answer.append(dns.rrset.from_rdata(owner, TTL, CNAME(IN, T.CNAME, target)))
                owner = target
            rd = A if qtype == T.A else AAAA
            if r.addrs:
                ans.answer.append(dns.rrset.from_rdata_list(
                    owner, TTL, [rd(IN, qtype, a) for a in r.addrs]))
            return ans
        if qtype == T.PTR:
            ip = dnsmsg.ip_of_ptr(qname)
            if ip is not None:
                err, name, _aliases = await self.reverse(ip)
                if err:
                    return dnsmsg.response(q, dns.rcode.NXDOMAIN if err == errno.ENOENT
                                           else dns.rcode.SERVFAIL)
                try:
                    target = dnsmsg.to_name(name)
                except dnsmsg.ERRORS:
                    return dnsmsg.response(q, dns.rcode.SERVFAIL)
                ans = dnsmsg.response(q)
                ans.answer.append(dns.rrset.from_rdata(question.name, TTL, PTR(IN, T.PTR, target)))
                return ans
        tn = await self._tailnet()
        if tn.lookup(qname) is not None:
            return dnsmsg.response(q, aa=True)                    # no such record: NODATA
        if tn.under_suffix(qname):
            return dnsmsg.response(q, dns.rcode.NXDOMAIN, aa=True)
        if self.tailnet_dns(tn):
            ans = await self._node_query(qname + ".", dns.rdatatype.to_text(qtype))
            if ans is None:
                return dnsmsg.response(q, dns.rcode.SERVFAIL)
            return dnsmsg.with_id(ans, q.id)
        return await self.system.forward(q, raw, search)

    # ------------------------------------------------------------ the channel
    async def handle(self, req: cp.NameRequest) -> bytes:
        """Channel callback: a RESOLVE/REVERSE/QUERY request -> its encoded reply."""
        if isinstance(req, cp.ResolveReq):
            r = await self.resolve(req.name, req.family, req.idn)
            return cp.encode_resolve_reply(r.err, r.addrs, flags=r.flags, canon=r.canon,
                                           aliases=r.aliases)
        if isinstance(req, cp.ReverseReq):
            err, name, aliases = await self.reverse(req.addr.ip)
            return cp.encode_reverse_reply(err, name, aliases)
        ans = await self.query(req.msg, req.search)
        if len(ans) > cp.ANSWER_MAX:
            ans = dnsmsg.truncate(ans, cp.ANSWER_MAX)
        return cp.encode_query_reply(0 if ans else errno.EIO, ans)


def node_dns_query(localapi) -> Callable[[str, str], bytes]:
    """The node's LocalAPI dns-query as a (name, type) -> answer bytes callable."""
    def query(name: str, qtype: str) -> bytes:
        r = localapi.dns_query(name, qtype)
        b = r.get("Bytes") if isinstance(r, dict) else None
        if isinstance(b, str):
            return base64.b64decode(b)
        if isinstance(b, list):
            return bytes(b)
        raise ValueError("dns-query: no answer bytes")
    return query
