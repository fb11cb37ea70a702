"""The small library of tailproxy's benchmarks: bench/run.py and bench/export_bench.py (and
bench/node_dial.py) import it; it imports neither.

Processes (run/show/start_server/stop, every command line logged in COMMANDS), /proc readings
(VmRSS, VmHWM, children), tcpbench helpers (build, result lines, the sink's delivered rate),
Series (repetitions of one figure) and the report helpers (ratio, cell, fr, table).
"""
from __future__ import annotations

import os
import platform
import shlex
import signal
import socket
import selectors
import statistics
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
GiB = 1 << 30
MiB = 1 << 20

COMMANDS: list[str] = []      # every command line run, in order (printed and saved)
STARTED: list[subprocess.Popen] = []   # long-running processes started (servers, daemons): stop_all()



def say(msg: str = "") -> None:
    print(msg, flush=True)


def show(argv: list[str], env: dict | None = None, note: str = "", secret: str | None = None) -> str:
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    line = (line + " " if line else "") + shlex.join(argv)
    if secret:     # the auth key is shown as the variable it came from
        line = line.replace(secret, "$TS_AUTHKEY")
    COMMANDS.append(line + (f"    # {note}" if note else ""))
    say(f"  $ {line}" + (f"    # {note}" if note else ""))
    return line


class Failed(Exception):
    pass


def parse_kv(line: str) -> dict:
    out = {}
    for tok in line.split()[1:]:
        k, _, v = tok.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def result_line(stdout: str, word: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(word + " "):
            return parse_kv(line)
    raise Failed(f"no '{word}' result in the output")


def tail(text: str, n: int = 6) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def run(argv: list[str], env: dict | None = None, timeout: float = 300, note: str = "",
        secret: str | None = None, on_start=None) -> str:
    """Run a client command to completion; return its stdout; raise Failed with the error.
    on_start(popen) is called once it is started (e.g. to watch its memory)."""
    show(argv, env, note, secret)
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    if on_start:
        on_start(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, err = p.communicate()
        raise Failed(f"timed out after {timeout:.0f}s; stderr: {tail(err)}") from None
    if p.returncode != 0:
        raise Failed(f"exit status {p.returncode}: {tail(err) or tail(out)}")
    return out + ("\n@@stderr\n" + err if err.strip() else "")


def kill_group(p: subprocess.Popen) -> None:
    """p was started with start_new_session: its process group id is its pid."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_server(argv: list[str], logpath: str, env: dict | None = None, note: str = "") -> tuple[subprocess.Popen, int]:
    """Start a tcpbench server (maybe under `ip netns exec`); wait for 'listening ADDR PORT'."""
    show(argv, env, note)
    log = open(logpath, "w")
    p = subprocess.Popen(argv, env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    STARTED.append(p)
    line = p.stdout.readline()
    if not line.startswith("listening "):
        raise SystemExit(f"bench: server did not start: {shlex.join(argv)}: {line!r}")
    return p, int(line.split()[2])


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"exited with status {proc.returncode} before listening")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Failed(f"nothing listening on {host}:{port} after {timeout}s")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()



def stop_all() -> None:
    for proc in reversed(STARTED):
        stop(proc)


# ---------------------------------------------------------------- /proc helpers

def status_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A KiB field of /proc/PID/status (VmRSS, VmHWM: the peak RSS so far), None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_kib(pid: int) -> int | None:
    return status_kib(pid, "VmRSS")


class PeakWatch:
    """Samples VmHWM (peak RSS) of one process every `every` s from a thread until stop() or the
    process is gone; .kib is the last reading (VmHWM only grows, so it is the peak up to then)."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every, self.kib = pid, every, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = status_kib(self.pid, "VmHWM")
            if v is None:
                return
            self.kib = v
            self._stop.wait(self.every)

    def stop(self) -> int | None:
        self._stop.set()
        self._t.join()
        return self.kib


def children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    todo, seen = children(pid), []
    while todo:
        c = todo.pop()
        seen.append(c)
        todo += children(c)
    return seen


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- setup

def build_tcpbench(tmp: str) -> str:
    out = os.path.join(tmp, "tcpbench")
    argv = ["gcc", "-O2", "-Wall", "-o", out, os.path.join(BENCH, "tcpbench.c")]
    show(argv)
    subprocess.run(argv, check=True)
    return out


def tailproxy_cmd(override: str | None) -> tuple[list[str], dict]:
    """How to run tailproxy: --tailproxy, else the venv's script next to this Python, else
    `python -m tailproxy` with src/ on PYTHONPATH."""
    if override:
        return shlex.split(override), {}
    script = os.path.join(os.path.dirname(sys.executable), "tailproxy")
    if os.access(script, os.X_OK):
        return [script], {}
    env = {}
    try:
        import tailproxy  # noqa: F401
    except ImportError:
        env["PYTHONPATH"] = os.path.join(ROOT, "src") + (
            os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    return [sys.executable, "-m", "tailproxy"], env


PROXYCHAINS_CONF = ("# tailproxy bench: one SOCKS5 hop, no DNS through the proxy\n"
                    "strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n"
                    "[ProxyList]\nsocks5 127.0.0.1 {port}\n")


def proxychains_conf(path: str, port: int) -> str:
    with open(path, "w") as f:
        f.write(PROXYCHAINS_CONF.format(port=port))
    return path


def versions(tsd: str) -> dict:
    v = {}
    for pkg in ("proxychains4", "microsocks"):
        try:
            v[pkg] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            v[pkg] = "?"
    try:
        v["tailscaled"] = subprocess.run([tsd, "--version"], capture_output=True, text=True,
                                         timeout=10).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        v["tailscaled"] = "?"
    try:
        v["git"] = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        v["git"] = "?"
    v["python"] = platform.python_version()
    v["kernel"] = platform.release()
    v["cpus"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            v["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        v["cpu"] = "?"
    return v


# ---------------------------------------------------------------- measurements

class Series:
    """Repetitions of one figure for one mode. A failed repetition is recorded (its error is
    reported) and the others still count."""

    def __init__(self):
        self.values: list[float] = []
        self.extra: list[dict] = []
        self.errors: list[str] = []

    def add(self, fn):
        try:
            v, extra = fn()
            self.values.append(v)
            self.extra.append(extra)
        except Failed as e:
            self.fail(str(e))

    def fail(self, msg: str) -> None:
        self.errors.append(msg)
        say(f"    FAILED: {msg}")

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the values (nearest rank, as tcpbench's p90)."""
        return pct(sorted(self.values), q) if self.values else None

    def to_json(self) -> dict:
        return {"median": self.median, "reps": self.values, "errors": self.errors, "raw": self.extra}


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values (tcpbench.c's pct())."""
    return sorted_values[int(q * (len(sorted_values) - 1) + 0.5)]


def rotated(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def sink_count(log: str) -> int:
    with open(log) as f:
        return sum(1 for l in f if l.startswith("sink: "))


def delivered(log: str, before: int, client: dict, expect: int, where: tuple | None = None) -> tuple[float, dict]:
    """The sink logs each connection once it has `expect` bytes or closes ("sink: N bytes first=T
    last=T", CLOCK_MONOTONIC, which network namespaces share). The rate is taken from the client's
    first write to the sink's last byte: through tailscaled the close can reach the client before
    the last bytes reach the sink. where = (netns or None, sink port), for the diagnosis."""
    deadline = time.monotonic() + 60
    while True:
        with open(log) as f:
            seen = [parse_kv(l.replace("sink: ", "sink bytes=", 1).replace(" bytes ", " ", 1))
                    for l in f if l.startswith("sink: ")][before:]
        ok = [d for d in seen if int(d["bytes"]) == expect and d["first"] >= client["t0"]]
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not ok:
        msg = (f"the client wrote all {expect} bytes and saw the close after {client.get('seconds')} s, "
               f"but 60 s later the sink still had not received them")
        if seen:
            msg += f" (connections it saw close: {', '.join(str(int(d['bytes'])) for d in seen)} bytes)"
        if where:
            msg += "; " + sink_sockets(*where)
        raise Failed(msg)
    d = ok[0]
    secs = d["last"] - client["t0"]
    out = dict(client, sink_last=d["last"], delivered_s=secs, delivered_gbit_s=expect * 8 / secs / 1e9)
    return out["delivered_gbit_s"], out


def sink_sockets(netns: str | None, port: int) -> str:
    """What the sink's open connections have received (ss), to tell lost data from a stall."""
    argv = (["ip", "netns", "exec", netns] if netns else []) + \
        ["ss", "-tniH", "state", "established", f"( sport = :{port} )"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ss failed: {e}"
    got = [tok.split(":", 1)[1] for tok in out.split() if tok.startswith("bytes_received:")]
    conns = sum(1 for l in out.splitlines() if l and not l[0].isspace())
    return (f"the sink has {conns} open connection(s) that received "
            f"{', '.join(got) if got else 'nothing'} bytes (ss in {netns or 'this namespace'})")


def hold_rss(argv: list[str], env: dict, targets, timeout: float, settle: float = 1.0) -> dict:
    """Start argv (a `tcpbench hold`), wait for 'held N', sample the RSS of targets(proc) -> {name: pid},
    then close its stdin and wait for it. Returns {name: KiB}."""
    show(argv, env)
    p = subprocess.Popen(argv, env=dict(os.environ, **env), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    line = ""
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                line = p.stdout.readline()
                if line.startswith("held ") or not line:
                    break
        if not line.startswith("held "):
            if p.poll() is None and time.monotonic() >= deadline:
                kill_group(p)
                p.wait()
                raise Failed(f"no 'held' after {timeout:.0f}s: {tail(p.stderr.read())}")
            p.wait(30)
            raise Failed(f"exit status {p.returncode}: {tail(p.stderr.read())}")
        time.sleep(settle)
        pids = targets(p)
        out = {name: rss_kib(pid) for name, pid in pids.items()}
        out["held"] = parse_kv(line).get("seconds")
    finally:
        if p.poll() is None:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                kill_group(p)
                p.wait()
    return out


# ---------------------------------------------------------------- report

def ratio(x, y) -> float | None:
    return x / y if x is not None and y not in (None, 0) else None


def cell(s: Series, fmt: str) -> str:
    if s.median is None:
        return "FAILED" if s.errors else "-"
    n = len(s.values) + len(s.errors)
    return fmt.format(s.median) + (f" ({len(s.errors)}/{n} reps FAILED)" if s.errors else "")


def fr(x, fmt="{:.2f}x") -> str:
    return fmt.format(x) if x is not None else "-"


def table(rows: list[list[str]], header: list[str]) -> str:
    w = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(r)).rstrip()
    return "\n".join([line(header), line(["-" * x for x in w])] + [line(r) for r in rows])




def start_socks_tailscaled(info: dict, d: str, hostname: str) -> tuple[subprocess.Popen, int]:
    """A userspace tailscaled with its SOCKS5 server on 127.0.0.1 (state in d, which it creates),
    joined to the local tailnet as `hostname`: (process, SOCKS5 port). The process is in STARTED."""
    port = free_port()
    os.makedirs(d, mode=0o700)
    env = {"TS_NO_LOGS_NO_SUPPORT": "true", "TS_DISABLE_PORTMAPPER": "1"}
    if os.environ.get("SSL_CERT_FILE"):
        env["SSL_CERT_FILE"] = os.environ["SSL_CERT_FILE"]
    sock, log = os.path.join(d, "s"), os.path.join(d, "log")
    argv = [info["bin"]["tailscaled"], "--tun=userspace-networking", f"--socks5-server=127.0.0.1:{port}",
            f"--statedir={d}", f"--socket={sock}", "--port=0"]
    show(argv, env, note=f"anchor node, log in {log}")
    with open(log, "w") as f:
        p = subprocess.Popen(argv, env=dict(os.environ, **env), stdin=subprocess.DEVNULL, stdout=f,
                             stderr=subprocess.STDOUT)
    STARTED.append(p)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if p.poll() is not None or time.monotonic() > deadline:
            raise Failed(f"tailscaled did not start: {tail(open(log).read())}")
        time.sleep(0.05)
    control = os.environ.get("TAILPROXY_CONTROL_URL") or info["control_url"]
    key = os.environ.get("TS_AUTHKEY") or info["authkey"]
    run([info["bin"]["tailscale"], f"--socket={sock}", "up", f"--login-server={control}",
         f"--auth-key={key}", f"--hostname={hostname}"], timeout=90, secret=key)
    wait_port("127.0.0.1", port, p)
    return p, port
