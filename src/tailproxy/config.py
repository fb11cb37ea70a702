"""Settings: one table of what can be set, read from flags > environment > profile > file defaults.

The config file is TOML (default ~/.config/tailproxy/config.toml): top-level keys are defaults,
`[profiles.NAME]` tables override them when `--profile NAME` is given.
"""
from __future__ import annotations

import math
import os

# Names for annotations only (never evaluated: `from __future__ import annotations`). No
# `typing`, `collections.abc` or `dataclasses` here: this module is on an attaching run's way
# to its program's exec (issue 16: <= 50 ms), and those imports alone cost ~half of it.
Any = Callable = Sequence = object

from .secretargs import read_references, secret


class ConfigError(Exception):
    """A bad setting; the message names the key and where it came from."""


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("expected a non-empty string")
    return v


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(v, str) and v.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _seconds(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not 0 < f <= 86400:
        raise ValueError("expected seconds between 0 and 86400")
    return f


def _linger(v: Any) -> float:
    """Seconds, or `forever` (math.inf): how long an agent outlives its last program."""
    if isinstance(v, str) and v.strip().lower() == "forever":
        return math.inf
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds or 'forever'") from None
    if not 0 <= f <= 86400 and f != math.inf:
        raise ValueError("expected seconds between 0 and 86400, or 'forever'")
    return f


def _url(v: Any) -> str:
    v = _str(v)
    if not v.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return v.rstrip("/")


def _hostname(v: Any) -> str:
    v = _str(v)
    if len(v) > 63 or not all(c.isalnum() or c == "-" for c in v) or v.startswith("-"):
        raise ValueError("expected a hostname: letters, digits and '-', at most 63 characters")
    return v


def _cidrs(v: Any) -> list[str]:
    import ipaddress    # here: ~4 ms that a run without --bypass does not need
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list):
        raise ValueError("expected a list of CIDRs")
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)") from None
    return out


def _names(v: Any) -> list[str]:
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a name or a comma-separated list of names")
    out = [i.strip() for i in items if i.strip()]
    if not out:
        raise ValueError("expected at least one name")
    return out


def _ports(v: Any) -> list[tuple[int, int]]:
    from .exporter.ports import parse_ports
    if isinstance(v, list):
        v = ",".join(str(i) for i in v)
    return parse_ports(str(v))


def _count(v: Any) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ValueError("expected a whole number") from None
    if n < 1:
        raise ValueError("expected at least 1")
    return n


def _hostport(v: Any) -> tuple[str, int]:
    v = _str(v)
    host, sep, port = v.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:1080")
    return host, int(port)


def _userpass(v: Any) -> tuple[str, str]:
    v = _str(v)
    user, sep, pw = v.partition(":")
    if not sep or not user or not pw or len(user) > 255 or len(pw) > 255:
        raise ValueError("expected USER:PASSWORD")
    return user, pw


def _dns_mode(v: Any) -> str:
    v = _str(v).lower()
    if v not in ("auto", "tailnet", "off"):
        raise ValueError("expected auto, tailnet or off")
    return v


def _intercept_mode(v: Any) -> str:
    v = _str(v).lower()
    if v not in ("auto", "preload", "seccomp"):
        raise ValueError("expected auto, preload or seccomp")
    return v


def _placeholder_v4(v: Any) -> str:
    from .resolver.placeholders import check_range
    return str(check_range(_str(v), 4))


def _placeholder_v6(v: Any) -> str:
    from .resolver.placeholders import check_range
    return str(check_range(_str(v), 6))


class Setting:
    key: str                      # config-file key; the flag is --key with '_' → '-'
    parse: Callable[[Any], Any]
    default: Any
    env: tuple[str, ...]
    help: str
    metavar: str | None           # None: a boolean flag
    repeat: bool                  # flag may be given several times (values accumulate)
    aliases: tuple[str, ...]
    secret: bool                  # kept off argv (secretargs.py)
    __slots__ = ("key", "parse", "default", "env", "help", "metavar", "repeat", "aliases",
                 "secret")

    def __init__(self, key: str, parse: Callable[[Any], Any], default: Any = None,
                 env: tuple[str, ...] = (), help: str = "", metavar: str | None = None,
                 repeat: bool = False, aliases: tuple[str, ...] = (), secret: bool = False):
        self.key, self.parse, self.default, self.env, self.help = key, parse, default, env, help
        self.metavar, self.repeat, self.aliases, self.secret = metavar, repeat, aliases, secret


SETTINGS: list[Setting] = [
    Setting("hostname", _hostname, "tailproxy", ("TAILPROXY_HOSTNAME",),
            "name of this node on the tailnet", "NAME"),
    Setting("authkey", secret(_str), None, ("TS_AUTHKEY", "TS_AUTH_KEY", "TAILPROXY_AUTHKEY"),
            "auth key to join the tailnet without a browser; file:PATH reads it from a file, - "
            "from stdin (a key on the command line is visible to every local user)", "KEY",
            secret=True,
            aliases=("auth-key",)),
    Setting("control_url", _url, None, ("TAILPROXY_CONTROL_URL",),
            "control server URL (default: Tailscale's)", "URL", aliases=("login-server",)),
    Setting("state_dir", _str, None, ("TAILPROXY_STATE_DIR",),
            "node state directory (default: $XDG_STATE_HOME/tailproxy/HOSTNAME)", "DIR"),
    Setting("ephemeral", _bool, False, ("TAILPROXY_EPHEMERAL",),
            "register as an ephemeral node, removed when it goes offline"),
    Setting("verbose", _bool, False, ("TAILPROXY_VERBOSE",),
            "log one line per connection and what tailproxy is doing"),
    Setting("bypass", _cidrs, (), ("TAILPROXY_BYPASS",),
            "send connections to CIDR directly, not through the tailnet (repeatable)", "CIDR",
            repeat=True),
    Setting("timeout", _seconds, 60.0, ("TAILPROXY_TIMEOUT",),
            "seconds to wait for the node to come up", "SECONDS"),
    Setting("connect_timeout", _seconds, 30.0, ("TAILPROXY_CONNECT_TIMEOUT",),
            "seconds a connection through the tailnet may take to open", "SECONDS"),
    Setting("exit_node", _names, None, ("TAILPROXY_EXIT_NODE",),
            "send non-tailnet traffic through this exit node (name, FQDN, IP, node ID or auto); "
            "a,b,c = fail over in that order", "NAME"),
    Setting("exit_node_allow_lan_access", _bool, False, (),
            "with --exit-node, let the program reach this host's LAN directly"),
    Setting("tailnet_only", _bool, False, ("TAILPROXY_TAILNET_ONLY",),
            "without an exit node, refuse non-tailnet destinations (EHOSTUNREACH) instead of "
            "dialling them from this host"),
    Setting("accept_routes", _bool, False, ("TAILPROXY_ACCEPT_ROUTES",),
            "use the subnet routes other nodes advertise: their destinations go through the "
            "tailnet (off by default, as Tailscale on Linux)"),
    Setting("export_listeners", _bool, False, ("TAILPROXY_EXPORT_LISTENERS",),
            "make the program's listening TCP ports reachable on the tailnet (and only there)"),
    Setting("export_allow_ports", _ports, None, (),
            "with --export-listeners, export only these ports, e.g. 3000,8080,10000-10100", "SPEC"),
    Setting("export_deny_ports", _ports, None, (),
            "never export these ports (wins over --export-allow-ports)", "SPEC"),
    Setting("export_max", _count, None, (), "export at most N ports", "N"),
    Setting("export_proxy_protocol", _bool, False, (),
            "prepend a PROXY protocol v2 header carrying the tailnet client's address"),
    Setting("export_idle_timeout", _seconds, None, (),
            "withdraw an export after SECONDS with no connection open or begun (it comes back "
            "when the program listens again)", "SECONDS"),
    Setting("no_tailnet", _bool, False, (),
            "dial destinations directly instead of through the tailnet (debugging, benchmarks)"),
    Setting("proxy_all", _bool, False, ("TAILPROXY_PROXY_ALL",),
            "hand every connection to the proxy, even one it would only dial directly (the "
            "program then connects nothing by itself: --verbose and --connect-timeout see every "
            "connection; debugging, benchmarks of the proxied path)"),
    Setting("socks5", _hostport, None, ("TAILPROXY_SOCKS5",),
            "with no command: serve SOCKS5 and HTTP proxy clients on HOST:PORT", "HOST:PORT"),
    Setting("socks5_auth", secret(_userpass), None, ("TAILPROXY_SOCKS5_AUTH",),
            "credentials for --socks5 (default: generated; file:PATH or - read them from a file "
            "or stdin)", "USER:PASS", secret=True),
    Setting("show_password", _bool, False, (),
            "with --socks5, print the proxy password in the start-up banner (hidden otherwise)"),
    Setting("socks5_no_auth", _bool, False, (),
            "serve --socks5 without credentials (any local user can then use your tailnet)"),
    Setting("dns", _dns_mode, "auto", ("TAILPROXY_DNS",),
            "name resolution for the program: auto (through the tailnet while an exit node is in "
            "use, else as this host resolves), tailnet (always through the tailnet), off (the "
            "program's own resolver, as without tailproxy)", "MODE"),
    Setting("dns_placeholder_v4", _placeholder_v4, "240.0.0.0/4", (),
            "IPv4 range of the placeholder addresses names get when resolved through the tailnet",
            "CIDR"),
    Setting("dns_placeholder_v6", _placeholder_v6, "fd74:7072:6f78::/48", (),
            "IPv6 range of the placeholder addresses (for IPv6-only lookups)", "CIDR"),
    Setting("intercept", _intercept_mode, "auto", ("TAILPROXY_INTERCEPT",),
            "how the program's connections are caught: auto (LD_PRELOAD for dynamic programs; "
            "seccomp for static ones and Go programs), preload, or seccomp (every program, raw "
            "syscalls included)", "MODE"),
    Setting("agent", _bool, True, ("TAILPROXY_AGENT",),
            "run the program on this identity's shared background agent (one node per state "
            "dir); --agent=false gives this run a node of its own that stops with it"),
    Setting("linger", _linger, 30.0, ("TAILPROXY_LINGER",),
            "seconds the agent stays up after its last program ends (0: stop at once; "
            "forever: until `tailproxy down`)", "SECONDS"),
]
BY_KEY = {s.key: s for s in SETTINGS}


class Settings:
    """The resolved settings of one invocation: one attribute per key of SETTINGS (same order,
    same defaults), read-only. `resolve()` builds it; `check_run()` rejects flag combinations.
    (A plain slotted class, not a dataclass: see the imports.)"""
    hostname: str
    authkey: str | None                     # never in a repr
    control_url: str | None
    state_dir: str | None                   # resolve() always fills it in
    ephemeral: bool
    verbose: bool
    bypass: Sequence[str]
    timeout: float
    connect_timeout: float
    exit_node: list[str] | None
    exit_node_allow_lan_access: bool
    tailnet_only: bool
    accept_routes: bool
    export_listeners: bool
    export_allow_ports: list[tuple[int, int]] | None
    export_deny_ports: list[tuple[int, int]] | None
    export_max: int | None
    export_proxy_protocol: bool
    export_idle_timeout: float | None
    no_tailnet: bool
    proxy_all: bool
    socks5: tuple[str, int] | None
    socks5_auth: tuple[str, str] | None     # never in a repr
    show_password: bool
    socks5_no_auth: bool
    dns: str
    dns_placeholder_v4: str
    dns_placeholder_v6: str
    intercept: str
    agent: bool
    linger: float
    __slots__ = tuple(s.key for s in SETTINGS)

    def __init__(self, **values: Any):
        unknown = set(values) - set(BY_KEY)
        if unknown:
            raise TypeError(f"Settings has no key {sorted(unknown)[0]!r}")
        for s in SETTINGS:
            object.__setattr__(self, s.key, values.get(s.key, s.default))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Settings are read-only (use replace() for {key!r})")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with `changes`."""
        return Settings(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict:
        return {s.key: getattr(self, s.key) for s in SETTINGS}

    def __eq__(self, other: object) -> bool:
        return type(other) is Settings and self.as_dict() == other.as_dict()

    __hash__ = None             # mutable values (lists) inside: not hashable

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{s.key}={getattr(self, s.key)!r}" for s in SETTINGS
                                       if not s.secret) + ")"

    def __getitem__(self, key: str) -> Any:
        """A setting by its config key (as files and error messages name it)."""
        if key not in BY_KEY:
            raise KeyError(key)
        return getattr(self, key)


if list(Settings.__annotations__) != [s.key for s in SETTINGS]:
    raise AssertionError("Settings and SETTINGS name different keys")



def default_config_path(env: dict) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "tailproxy", "config.toml")


def _check_table(table: dict, where: str) -> dict:
    out = {}
    for k, v in table.items():
        s = BY_KEY.get(k.replace("-", "_"))
        if s is None:
            raise ConfigError(f"{where}: unknown key {k!r}")
        try:
            out[s.key] = s.parse(v)
        except ValueError as e:
            raise ConfigError(f"{where}: bad value for {k!r}: {e}") from None
    return out


def load_file(path: str, profile: str | None, required: bool) -> dict:
    """Settings from the file's defaults overlaid with the profile's."""
    try:
        with open(path, "rb") as f:
            import tomllib      # here: most runs have no config file, and the import costs ~10 ms
            data = tomllib.load(f)
    except FileNotFoundError:
        if required or profile:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except ValueError as e:     # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    profiles = data.pop("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: 'profiles' must be a table of [profiles.NAME] tables")
    values = _check_table(data, path)
    checked = {}
    for name, table in profiles.items():  # every profile is checked, used or not
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: profiles.{name} must be a table")
        checked[name] = _check_table(table, f"{path} [profiles.{name}]")
    if profile:
        if profile not in checked:
            names = ", ".join(sorted(checked)) or "none"
            raise ConfigError(f"{path}: no profile {profile!r} (profiles: {names})")
        values.update(checked[profile])
    return values


def from_env(env: dict) -> dict:
    out = {}
    for s in SETTINGS:
        for name in s.env:
            if env.get(name):
                try:
                    out[s.key] = s.parse(env[name])
                except ValueError as e:
                    raise ConfigError(f"environment {name}: {e}") from None
                break
    return out


def resolve(flags: dict, env: dict, config_path: str | None, profile: str | None) -> Settings:
    """Final settings: flags > environment > profile > file defaults > built-in defaults."""
    values = {s.key: s.default for s in SETTINGS}
    values.update(load_file(config_path or default_config_path(env), profile,
                            required=config_path is not None))
    values.update(from_env(env))
    values.update(flags)
    try:
        values = read_references(values)     # file:PATH and - (secretargs.py)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if values["state_dir"] is None:
        base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        values["state_dir"] = os.path.join(base, "tailproxy", values["hostname"])
    return Settings(**values)


def check_command(settings: Settings, command: list[str]) -> None:
    """A command, or --socks5 without one (ConfigError otherwise)."""
    if not command and not settings.socks5:
        raise ConfigError("no command given (usage: tailproxy [OPTIONS] [--] CMD [ARGS...])")
    if command and settings.socks5:
        raise ConfigError("--socks5 serves proxy clients and takes no command")


def uses_agent(settings: Settings, command: list[str]) -> bool:
    """A program, or a --socks5 proxy, run on the identity's shared agent: not with
    --no-tailnet (there is no node to share)."""
    return bool(command or settings.socks5) and settings.agent and not settings.no_tailnet


# Settings one agent applies to every program it serves (the node's, and the placeholder ranges
# its one address map hands out); a program asking for other values cannot join a running agent.
AGENT_WIDE = ("hostname", "control_url", "ephemeral", "exit_node", "exit_node_allow_lan_access",
              "accept_routes", "dns_placeholder_v4", "dns_placeholder_v6")
# Settings that travel with each program's registration: the agent applies them to that
# program's connections, names and exports only (agent/session.py). --bypass needs no agent:
# the program's preload reads it from its environment.
PER_PROGRAM = ("verbose", "tailnet_only", "connect_timeout", "dns", "proxy_all",
               "export_listeners", "export_allow_ports", "export_deny_ports", "export_max",
               "export_proxy_protocol", "export_idle_timeout")


def check_run(settings: Settings) -> None:
    """Flag combinations a run (program or --socks5) cannot honour (ConfigError)."""
    s = settings
    if s.no_tailnet and (s.exit_node or s.tailnet_only or s.export_listeners):
        raise ConfigError("--no-tailnet cannot be combined with --exit-node, --tailnet-only or "
                          "--export-listeners")
    if not s.export_listeners and any((s.export_allow_ports, s.export_deny_ports, s.export_max,
                                       s.export_proxy_protocol, s.export_idle_timeout)):
        raise ConfigError("--export-allow-ports/--export-deny-ports/--export-max/"
                          "--export-proxy-protocol/--export-idle-timeout need --export-listeners")
    if s.no_tailnet and s.dns == "tailnet":
        raise ConfigError("--dns=tailnet needs the tailnet; it cannot be combined with "
                          "--no-tailnet")
