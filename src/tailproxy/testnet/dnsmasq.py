"""The testnet's DNS servers: dnsmasq from Debian (package dnsmasq-base), not code of ours, so
they judge the name service from outside it.

- the client host's **recording resolver** (127.0.0.53 in the client namespace): no upstream
  servers, so every query is REFUSED, and ``--log-queries`` writes one ``query[TYPE] NAME from
  CLIENT`` line per query to the testnet's ``dns_log`` (read it with :func:`read_queries`);
- the **authoritative server** for ``internet.test`` on the internet host (``--auth-zone``;
  names in the zone get their records or NXDOMAIN, others REFUSED), logging to stderr, i.e. to
  the testnet's ``logs/dns-internet.log``.

Both bind only the address they are given, inside the namespace they run in.
"""
from __future__ import annotations

import re
import shutil
import time

COMMON = ["--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--user=root",
          "--group=root", "--no-resolv", "--no-hosts", "--bind-interfaces", "--log-queries"]
STARTED = b"]: started, version"     # logged once the sockets are bound

_QUERY = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) dnsmasq\[\d+\]: (?:\d+ \S+ )?"
                    r"query\[([^\]]+)\] (\S+) from (\S+)$")


def binary() -> str:
    path = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if not path:
        raise FileNotFoundError("dnsmasq not found: apt-get install dnsmasq-base (make deps)")
    return path


def recorder_argv(listen: str, log_path: str) -> list[str]:
    """A resolver that refuses every query and logs each one to log_path."""
    return [binary(), *COMMON, f"--listen-address={listen}", f"--log-facility={log_path}",
            "--cache-size=0"]


def authoritative_argv(listen: str, zone: str, a: dict[str, str]) -> list[str]:
    """Authoritative for zone (A records from a: name -> IPv4) on listen; logs to stderr."""
    return [binary(), *COMMON, f"--listen-address={listen}", f"--local=/{zone}/",
            *(f"--host-record={name},{ip}" for name, ip in a.items()),
            f"--auth-zone={zone}", f"--auth-server={zone},{listen}", "--log-facility=-"]


def started(log_path: str) -> bool:
    try:
        with open(log_path, "rb") as f:
            return STARTED in f.read()
    except FileNotFoundError:
        return False


def read_queries(path: str, offset: int = 0) -> list[dict]:
    """The queries dnsmasq logged in path (from byte offset on): one dict per query, with
    qname, qtype ("A", "AAAA", "type=65280" ...), client and time (seconds since the epoch)."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", "replace").splitlines()
    year = time.localtime().tm_year
    out = []
    for line in lines:
        m = _QUERY.match(line)
        if m:
            stamp, qtype, qname, client = m.groups()
            try:
                t = time.mktime(time.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S"))
            except ValueError:
                t = None
            out.append({"time": t, "qname": qname, "qtype": qtype, "client": client})
    return out
