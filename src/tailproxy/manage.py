"""Management subcommands: `tailproxy ps`, `up`, `down` and `exit-node set NAME|clear|list`."""
from __future__ import annotations

import sys

from . import control
from .config import ConfigError, Settings
from .printable import printable
from .rundir import RunDirError

USAGE = """usage: tailproxy ps [--json]
       tailproxy top [--once [--json]]  (connections, programs, peers, exit node of each agent)
       tailproxy [--hostname NAME] ui [--no-browser]   (the agent's local web page)
       tailproxy up [OPTIONS]            (start or keep this identity's agent; --linger forever)
       tailproxy down [--hostname NAME | --state-dir DIR]
       tailproxy [--hostname NAME] exit-node set NAME|auto
       tailproxy [--hostname NAME] exit-node clear
       tailproxy [OPTIONS] exit-node list
(`tailproxy -- ps` runs a program called ps.)"""


def _err(msg: str) -> int:
    print(f"tailproxy: {printable(msg, keep_newlines=True)}", file=sys.stderr)
    return 1


def _pick(runs, hostname: str | None):
    if hostname:
        runs = [r for r in runs if r[1].get("hostname") == hostname
                or (r[1].get("node_name") or "").split(".")[0] == hostname]
    if len(runs) == 1:
        return runs[0], None
    if not runs:
        return None, ("no running tailproxy" + (f" with hostname {hostname!r}" if hostname else ""))
    names = ", ".join(f"{i.get('hostname')} (pid {i.get('pid')})" for _, i in runs)
    return None, f"several tailproxies are running ({names}); choose one with --hostname"


def _all_runs() -> list[tuple[str, dict]]:
    """Agents first, then tailproxies that run a node of their own (--agent=false, --socks5)."""
    from .agent.client import agents
    return agents() + control.running()


def _started(t) -> str:
    import time
    return time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "-"


JSON_VERSION = 1       # of `ps --json` and `top --once --json` (docs/schemas/)


def ps(as_json: bool = False) -> int:
    runs = _all_runs()
    if as_json:
        import json
        print(json.dumps({"version": JSON_VERSION,
                          "runs": [_without_ok(i) for _, i in runs]}, indent=1))
        return 0
    rows = [("PID", "HOSTNAME", "NODE", "ADDRESSES", "EXIT NODE", "ROUTES", "EXPORTS", "COMMAND")]
    for _, i in runs:
        rows.append((str(i.get("pid")), i.get("hostname") or "-", i.get("node_name") or "-",
                     ",".join(i.get("ips") or []) or "-", i.get("exit_node") or "-",
                     ",".join(f"{r.get('route')}@{r.get('via')}" for r in i.get("routes") or [])
                     or "-",
                     ",".join(str(p) for p in i.get("exports") or []) or "-",
                     "(agent: programs below)" if i.get("agent")
                     else " ".join(i.get("command") or []) or "(proxy only)"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    agents = [i for _, i in runs if i.get("agent")]
    for i in agents:
        linger = i.get("linger")
        print(f"\nagent {i.get('pid')} ({i.get('hostname')}, {i.get('state_dir')}): "
              f"linger {linger if linger == 'forever' else f'{linger:g}s'}, "
              f"{i.get('tracked', 0)} process(es) tracked, "
              f"{i.get('connections', 0)} connection(s) relayed by the proxy "
              f"(the node's fast path not counted)")
        for p in i.get("programs") or []:
            idle = (f" (idle timeout {p['export_idle_timeout']:g}s"
                    + (f"; withdrawn {','.join(map(str, p['withdrawn']))})" if p.get("withdrawn")
                       else ")") if p.get("export_idle_timeout") else "")
            exports = (f"  exports {','.join(map(str, p['exports'])) or '-'}{idle}"
                       if p.get("exports") or idle else "")
            print(f"  {p.get('pid'):>7}  {_started(p.get('started'))}  "
                  f"{printable(' '.join(p.get('command') or [])) or '(up)'}{exports}")
    return 0


def _without_ok(reply: dict) -> dict:
    return {k: v for k, v in reply.items() if k != "ok"}


def top_once(as_json: bool) -> int:
    """One look at every agent: its programs, connections (open and recently closed), peers
    with their paths, the exit node's health, name lookups by source."""
    from .agent.client import agents
    views = []
    for path, _ in agents():
        try:
            reply = control.ask(path, {"cmd": "top"}, timeout=10)
        except (OSError, ValueError):
            continue            # it stopped between the two questions
        if reply.get("ok"):
            views.append(_without_ok(reply))
    if as_json:
        import json
        print(json.dumps({"version": JSON_VERSION, "agents": views}, indent=1))
        return 0
    from .topview import render_text
    print(render_text(views, width=_terminal_width()))
    return 0


def ui(hostname: str | None, browser: bool) -> int:
    """Start (or find) the agent's web page and print its URL, with its token."""
    from .agent.client import agents
    target, why = _pick(agents(), hostname)
    if target is None:
        return _err(why.replace("tailproxy", "agent", 1) if why.startswith("no running")
                    else why)
    reply = control.ask(target[0], {"cmd": "ui"}, timeout=30)
    if not reply.get("ok"):
        return _err(reply.get("error", "failed"))
    print(f"{target[1].get('hostname')}: {reply['url']}", flush=True)
    if browser:
        import webbrowser
        try:
            webbrowser.open(reply["url"])
        except webbrowser.Error as e:
            return _err(f"cannot open a browser ({e}); open the URL above")
    return 0


def _terminal_width() -> int:
    import shutil
    return shutil.get_terminal_size((80, 24)).columns


def up(settings: Settings) -> int:
    """Start this identity's agent, or keep the running one, with --linger from `settings`."""
    from .agent.client import AgentError, attach
    from .agent.identity import IdentityError
    from .config import check_run
    check_run(settings)
    try:
        conn, reply = attach(settings, [])
    except AgentError as e:
        return _err(str(e)) if str(e) else e.status
    except IdentityError as e:
        return _err(str(e))
    try:
        from .agent.client import _request
        linger = "forever" if settings.linger == float("inf") else settings.linger
        _request(conn, {"cmd": "linger", "linger": linger})
    finally:
        conn.close()
    how = "until `tailproxy down`" if linger == "forever" else f"linger {linger:g}s"
    print(f"agent {reply['agent_pid']} serves {settings.hostname} ({settings.state_dir}); {how}")
    return 0


def down(settings: Settings) -> int:
    """Stop this identity's agent and wait until it has exited."""
    from .agent.client import ask, wait_until_gone
    from .agent.identity import IdentityError
    from .agent.identity import remove_if_dead
    reply = ask(settings, {"cmd": "down"})
    if reply is None:
        try:
            remove_if_dead(settings.state_dir)       # what a SIGKILLed agent left
        except OSError:
            pass
        return _err(f"no agent runs for {settings.hostname} ({settings.state_dir})")
    try:
        if not wait_until_gone(settings.state_dir, 30):
            return _err(f"agent {reply.get('pid')} did not stop within 30s")
    except IdentityError as e:
        return _err(str(e))
    print(f"agent {reply.get('pid')} stopped")
    return 0


def _print_exit_nodes(rows: list[dict]) -> None:
    if not rows:
        print("no exit nodes on this tailnet")
        return
    for r in rows:
        state = "online" if r["online"] else "offline"
        mark = " (in use)" if r["current"] else ""
        print(f"{r['name']:<40} {','.join(r['ips']):<40} {state}{mark}")


def _list_with_own_node(settings: Settings) -> int:
    from .node import Node, NodeConfig, NodeError
    node = Node(NodeConfig(state_dir=settings.state_dir, hostname=settings.hostname,
                           authkey=settings.authkey, control_url=settings.control_url,
                           ephemeral=settings.ephemeral))
    try:
        node.up(settings.timeout)
        _print_exit_nodes(control.exit_node_rows(node.localapi.status()))
        return 0
    except NodeError as e:
        return _err(f"cannot join the tailnet: {e}")
    finally:
        node.close()


def _options_after(name: str, words: list[str]) -> Settings | None:
    """`tailproxy down --hostname H`: options after `up`/`down` are read as if they came first
    (with the environment and config file, not with options given before the subcommand)."""
    import os

    from .cli import UsageError, parse_args
    from .config import resolve
    try:
        flags, meta, rest = parse_args(words)
        if rest:
            raise UsageError(f"{name} takes options only, not {rest[0]!r}")
        return resolve(flags, dict(os.environ), meta.get("config"), meta.get("profile"))
    except (UsageError, ConfigError) as e:
        _err(str(e))
        return None


def main(args: list[str], settings: Settings, hostname_flag: str | None) -> int:
    try:
        return _run_subcommand(args, settings, hostname_flag)
    except (RunDirError, ConfigError) as e:
        return _err(str(e))


def _run_subcommand(args: list[str], settings: Settings, hostname_flag: str | None) -> int:
    if args[0] == "ps":
        if args[1:] not in ([], ["--json"]):
            return _err("ps takes only --json\n" + USAGE)
        return ps(as_json=len(args) == 2)
    if args[0] == "top":
        words = set(args[1:])
        if len(words) != len(args) - 1 or not words <= {"--once", "--json"}:
            return _err("top takes --once and --json\n" + USAGE)
        if "--once" in words:
            return top_once("--json" in words)
        if "--json" in words:
            return _err("top --json needs --once\n" + USAGE)
        from .top import run
        return run()
    if args[0] == "ui":
        if args[1:] not in ([], ["--no-browser"]):
            return _err("ui takes only --no-browser\n" + USAGE)
        return ui(hostname_flag, browser=len(args) == 1)
    if args[0] in ("up", "down"):
        if len(args) > 1:
            settings = _options_after(args[0], args[1:])
            if settings is None:
                return 2
        return up(settings) if args[0] == "up" else down(settings)
    sub = args[1:] if len(args) > 1 else []
    if not sub or sub[0] not in ("set", "clear", "list") or \
            (sub[0] == "set" and len(sub) != 2) or (sub[0] != "set" and len(sub) != 1):
        return _err(USAGE)
    runs = _all_runs()
    target, why = _pick(runs, hostname_flag)
    # list with nothing to ask: bring this identity's node up briefly. That is the case when
    # no tailproxy runs, or when --hostname names one that does not (whatever else runs).
    if sub[0] == "list" and target is None and (hostname_flag or not runs):
        return _list_with_own_node(settings)
    if target is None:
        return _err(why)
    req = {"cmd": "exit-node-" + sub[0]}
    if sub[0] == "set":
        req["name"] = sub[1]
    reply = control.ask(target[0], req, timeout=60)
    if not reply.get("ok"):
        return _err(reply.get("error", "failed"))
    if sub[0] == "list":
        _print_exit_nodes(reply["exit_nodes"])
    elif sub[0] == "set":
        print(f"{target[1].get('hostname')}: exit node {reply['exit_node']}")
    else:
        print(f"{target[1].get('hostname')}: exit node cleared")
    return 0
