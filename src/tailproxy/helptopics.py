"""`tailproxy help TOPIC`: pages on the config file, exit nodes, exports, names and top.

Each page is a few paragraphs of prose followed by the settings it is about, rendered from
config.SETTINGS, the table that --help, the flag parser, the config file reader and shell
completion use too; so a page cannot name a flag, key or variable that does not exist.
"""
from __future__ import annotations

import dataclasses
import textwrap

from .config import BY_KEY, SETTINGS, Setting


@dataclasses.dataclass(frozen=True)
class Topic:
    name: str
    summary: str
    text: str
    keys: tuple[str, ...]     # the settings the page lists


TOPICS = (
    Topic("config", "the config file, profiles, environment variables and precedence", """
        Settings come from, in this order of precedence: flags > environment > profile > file
        defaults > built-in defaults. The config file is TOML, by default
        ~/.config/tailproxy/config.toml (--config FILE names another; a missing default file is
        fine, a missing named one is an error). Its top-level keys are defaults; a
        [profiles.NAME] table overrides them when --profile NAME is given. Unknown keys and bad
        values are errors that name the key and where it came from.

            hostname = "laptop-proxy"
            control_url = "https://headscale.example.com"
            [profiles.ci]
            ephemeral = true
            bypass = ["10.0.0.0/8"]

        Secrets (authkey, socks5_auth) are best given as file:PATH or - (a line on stdin): a
        value on the command line is visible to every local user until tailproxy moves it off.

        Every setting: its flag, config key, environment variables and default.""",
          tuple(s.key for s in SETTINGS)),
    Topic("exit-nodes", "sending non-tailnet traffic out through an exit node", """
        With --exit-node NAME, destinations outside the tailnet leave through that exit node;
        NAME is a short name, FQDN, hostname, tailnet IP, node ID or `auto`. A list a,b,c fails
        over in that order (checked every 0.5 s); dials under way through a dead exit node
        start again through the next one. Names then resolve on the exit node's side (see
        `tailproxy help names`).

        A running tailproxy's exit node can be changed without restarting it:

            tailproxy [--hostname H] exit-node set NAME|auto
            tailproxy [--hostname H] exit-node clear
            tailproxy [OPTIONS] exit-node list

        --hostname chooses the tailproxy when several run; `list` brings a node up briefly
        when none does. Without an exit node, --tailnet-only refuses non-tailnet destinations
        instead of dialling them from this host.""",
          ("exit_node", "exit_node_allow_lan_access", "tailnet_only", "accept_routes", "dns")),
    Topic("exports", "serving the program's listening ports on the tailnet", """
        With --export-listeners, every TCP port the program listens on, and every UDP port it
        binds a socket to (a fixed port: a server's), is served at the same port on the node's
        tailnet addresses, and only there: the program's bind() is held to loopback. An export
        lives while the kernel shows the listener (or the bound UDP socket). --export-allow-ports
        and --export-deny-ports take SPEC lists such as 3000,8080,10000-10100 (deny wins);
        --export-max caps the number of exported ports. With --verbose each inbound
        connection is logged with the peer's node and user.

            tailproxy --export-listeners npm run dev""",
          ("export_listeners", "export_allow_ports", "export_deny_ports", "export_max",
           "export_proxy_protocol", "export_idle_timeout", "verbose")),
    Topic("names", "how the program's name lookups are answered", """
        A program's lookups (getaddrinfo and friends, res_query and friends, and its own DNS
        packets to port 53) are answered by tailproxy's name service, in this order:

          1. /etc/hosts;
          2. tailnet names: MagicDNS short names and FQDNs give the peers' real tailnet
             addresses; an unknown name under the MagicDNS suffix is NXDOMAIN;
          3. other names: with an exit node in use (--dns auto, the default) or --dns tailnet,
             a placeholder address that is dialled by name through the node, so the name is
             resolved on the exit node's side and never on this host; otherwise as this host
             would resolve it.

        --dns off leaves the program's own resolver alone. Placeholders come from a reserved
        range (240.0.0.0/4 and a unique-local IPv6 /48 by default) and hold for one run. A
        name that does not exist still gets a placeholder; the connect then fails
        (EHOSTUNREACH). Statically linked programs, DoH and DoT are not covered.""",
          ("dns", "dns_placeholder_v4", "dns_placeholder_v6", "bypass")),
    Topic("top", "seeing what tailproxy is doing: tailproxy top and ps --json", """
        `tailproxy top` is a live view of every agent of yours: its connections (the busiest
        first), programs, and tailnet peers with their WireGuard path (direct or through a
        DERP relay) and last handshake, with the exit node's health on top. Keys: c, p and n
        switch between connections, programs and peers; / filters (Enter ends the filter, an
        empty one clears it); q quits. It fits an 80x24 terminal and works over SSH.

        `tailproxy top --once` prints one look as text; `--once --json` as JSON, and
        `tailproxy ps --json` the running agents and tailproxies; both are described by JSON
        schemas (docs/schemas/top.schema.json, ps.schema.json in the source).

        Each connection the agent's proxy routes is listed with the process that made it,
        the destination as the program asked for it (a name, for a placeholder address) and
        as it dialled it, its route (tailnet, exit-node, direct), state, bytes each way,
        connect latency, age and, once closed, how it ended; the last 256 closed or failed
        ones are kept, along with totals, failures by errno, a connect-latency histogram and
        name lookups by answer source (hosts, magicdns, placeholder, system; names the program
        answers itself from the name table are not counted). Memory stays
        bounded: at most 4096 open connections are listed, more are only counted. Not
        listed: connections the program connects itself (loopback, --bypass, and direct
        destinations without an exit node). Connections to online peers that the node relays
        on its own (the fast path) are listed while open, with their bytes so far, and are
        counted and kept in the closed window once they end.""",
          ("verbose",)),
)
BY_NAME = {t.name: t for t in TOPICS}


def flag_of(s: Setting) -> str:
    return "--" + s.key.replace("_", "-") + (f" {s.metavar}" if s.metavar else "")


def describe_setting(s: Setting) -> str:
    """A setting as a help page lists it: flag and aliases, key, environment, default, help."""
    head = ", ".join([flag_of(s)] + [f"--{a}" for a in s.aliases])
    facts = [f"config key {s.key}"]
    if s.env:
        facts.append("env " + ", ".join(s.env))
    if s.default not in (None, False, ()) and not s.secret:
        facts.append(f"default {s.default}")
    body = textwrap.fill(s.help, width=86, initial_indent="      ", subsequent_indent="      ")
    return f"  {head}\n{body}\n      ({'; '.join(facts)})"


def page(name: str) -> str:
    """The text of `tailproxy help NAME` (KeyError for an unknown topic)."""
    topic = BY_NAME[name]
    settings = "\n".join(describe_setting(BY_KEY[k]) for k in topic.keys)
    return (f"tailproxy help {topic.name}: {topic.summary}\n\n"
            f"{textwrap.dedent(topic.text).strip()}\n\nsettings:\n{settings}")


def index() -> str:
    rows = "\n".join(f"  tailproxy help {t.name:<12} {t.summary}" for t in TOPICS)
    return f"help topics:\n{rows}\n  tailproxy --help              the options"
