"""Command line: `tailproxy [OPTIONS] [--] CMD [ARGS...]` and `tailproxy --socks5 HOST:PORT`.

Options end at the first non-option word or at `--`; everything after CMD is passed untouched.
The seed design's single-dash spellings (`-verbose`, `-exit-node=x`) are accepted too.

This module stays light: `--help`, `--version`, `help` and `completion` import neither
asyncio nor the node library (the launcher and the management commands are imported late), and
completion.py (with its dataclasses) is imported only where it is needed: an attaching run goes
from here to its program's exec.
"""
from __future__ import annotations

import os
import sys

from . import __version__
from .config import BY_KEY, SETTINGS, ConfigError, check_command, check_run, resolve, uses_agent
from .printable import printable
from .secretargs import is_reference, reexec_without, take_handed_over

_FLAGS = {}
for _s in SETTINGS:
    for _name in (_s.key.replace("_", "-"),) + _s.aliases:
        _FLAGS[_name] = _s
_META_FLAGS = {"config": "FILE", "profile": "NAME"}
_META_HELP = {"config": "config file (default ~/.config/tailproxy/config.toml)",
              "profile": "use [profiles.NAME] from the config file"}
_SWITCHES = {"help": "print this help", "version": "print the version"}   # -h is --help
# Management subcommands (manage.py): they act on running tailproxies and need settings.
MANAGE_SUBCOMMANDS = ("ps", "top", "ui", "exit-node", "up", "down")
EXIT_NODE_ACTIONS = ("set", "clear", "list")
# Subcommands that need no settings: a broken config file must not stop them.
INFO_SUBCOMMANDS = ("help", "completion")
SUBCOMMANDS = MANAGE_SUBCOMMANDS + INFO_SUBCOMMANDS


class UsageError(Exception):
    pass


def usage() -> str:
    from .completion import SHELLS
    lines = ["usage: tailproxy [OPTIONS] [--] CMD [ARGS...]",
             "       tailproxy [OPTIONS] --socks5 HOST:PORT",
             "",
             "Runs CMD with every TCP connection it (and its children) makes going through your",
             "Tailscale tailnet. Loopback and --bypass networks go direct.",
             "",
             "options:"]
    for s in SETTINGS:
        flag = "--" + s.key.replace("_", "-") + (f" {s.metavar}" if s.metavar else "")
        alias = "".join(f", --{a}" for a in s.aliases)
        env = f" [env {', '.join(s.env)}]" if s.env else ""
        lines.append(f"  {flag + alias:<34} {s.help}{env}")
    for name, metavar in _META_FLAGS.items():
        lines.append(f"  {'--' + name + ' ' + metavar:<34} {_META_HELP[name]}")
    for name, text in _SWITCHES.items():
        lines.append(f"  {'--' + name:<34} {text}")
    lines += ["", "subcommands (`tailproxy -- NAME` always runs a program NAME instead):",
              "  tailproxy ps [--json]                      list running agents and tailproxies",
              "  tailproxy top [--once [--json]]            live connections, programs, peers, exit node",
              "  tailproxy [--hostname H] ui [--no-browser] the agent's local web page (prints its URL)",
              "  tailproxy up [OPTIONS]                     start this identity's agent (--linger)",
              "  tailproxy down [--hostname H|--state-dir D]   stop this identity's agent",
              "  tailproxy [--hostname H] exit-node set NAME|auto   (also: exit-node clear, exit-node list)",
              f"  tailproxy completion {'|'.join(SHELLS):<21} print a shell completion script",
              "  tailproxy help TOPIC                       config, exit-nodes, exports, names, top"]
    return "\n".join(lines)


def version() -> str:
    """The package version and what its node library was built from (versions.json, written
    at build time: an installed package has no go.mod to read)."""
    from .native import build_versions
    built = build_versions()
    if not built:
        return f"tailproxy {__version__} (native parts not built)"
    return f"tailproxy {__version__} (tailscale.com {built.get('tailscale.com', '?')}, " \
           f"{built.get('go', '?')})"


def completion_spec() -> "CompletionSpec":
    """What the parser accepts, from the dicts parse_args() consults (_FLAGS, _META_FLAGS),
    for the completion scripts."""
    from .completion import SHELLS, CompletionSpec, OptionSpec, SubcommandSpec
    from .helptopics import TOPICS
    options, seen = [], set()
    for s in SETTINGS:
        names = tuple(n for n, setting in _FLAGS.items() if setting is s)
        options.append(OptionSpec(names, _value_kind(s.metavar), s.help))
        seen.update(names)
    assert seen == set(_FLAGS), "every parser flag belongs to a setting"
    options += [OptionSpec((n,), _value_kind(m), _META_HELP[n]) for n, m in _META_FLAGS.items()]
    options += [OptionSpec((n,), None, text) for n, text in _SWITCHES.items()]
    subcommands = (
        SubcommandSpec("ps", "list running agents and tailproxies", ("--json",)),
        SubcommandSpec("top", "connections, programs, peers and exit node of each agent",
                       ("--once", "--json")),
        SubcommandSpec("ui", "the agent's local web page (prints its URL)", ("--no-browser",)),
        SubcommandSpec("up", "start this identity's agent in the background"),
        SubcommandSpec("down", "stop this identity's agent"),
        SubcommandSpec("exit-node", "set, clear or list a running tailproxy's exit node",
                       EXIT_NODE_ACTIONS),
        SubcommandSpec("completion", "print a shell completion script", SHELLS),
        SubcommandSpec("help", "help on a topic", tuple(t.name for t in TOPICS)),
    )
    assert {s.name for s in subcommands} == set(SUBCOMMANDS)
    return CompletionSpec(tuple(options), subcommands)


def _value_kind(metavar: str | None) -> str | None:
    if metavar is None:
        return None
    return {"FILE": "file", "DIR": "dir"}.get(metavar, "word")


def _info_subcommand(args: list[str]) -> int:
    """`tailproxy help [TOPIC]` and `tailproxy completion SHELL`."""
    if args[0] == "completion":
        from .completion import SHELLS, script
        if len(args) != 2 or args[1] not in SHELLS:
            raise UsageError(f"usage: tailproxy completion {'|'.join(SHELLS)}")
        print(script(args[1], completion_spec()), end="")
        return 0
    from . import helptopics
    if len(args) == 1:
        print(usage() + "\n\n" + helptopics.index())
        return 0
    if len(args) != 2 or args[1] not in helptopics.BY_NAME:
        raise UsageError("usage: tailproxy help TOPIC\n" + helptopics.index())
    print(helptopics.page(args[1]))
    return 0


def _note_argv_secret(meta: dict, key: str, value: str, indices: range) -> None:
    moved, drop = meta.setdefault("argv_secrets", ({}, set()))
    moved[key] = value
    drop.update(indices)


def parse_args(argv: list[str]) -> tuple[dict, dict, list[str]]:
    """(flag settings, meta options, command). Raises UsageError.

    meta["explicit"] is set when `--` came before the command (never a subcommand then);
    meta["argv_secrets"] = ({key: literal value}, {argv indices}) when a secret was given
    literally (it is then moved off argv: secretargs.py)."""
    flags: dict = {}
    meta: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            meta["explicit"] = True
            return flags, meta, argv[i + 1:]
        if not arg.startswith("-") or arg == "-":
            return flags, meta, argv[i:]
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _SWITCHES or name == "h":
            meta["help" if name == "h" else name] = True
            i += 1
            continue
        if name in _META_FLAGS or (name in _FLAGS and _FLAGS[name].metavar):
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"option --{name} needs a value")
                i += 1
                value = argv[i]
            if name in _META_FLAGS:
                meta[name] = value
            else:
                s = _FLAGS[name]
                try:
                    parsed = s.parse(value)
                except ValueError as e:
                    raise UsageError(f"--{name}: {e}") from None
                if s.secret and not is_reference(value):
                    _note_argv_secret(meta, s.key, value, range(i - (not eq), i + 1))
                if s.repeat:
                    flags[s.key] = list(flags.get(s.key, [])) + list(parsed)
                else:
                    flags[s.key] = parsed
        elif name in _FLAGS:
            s = _FLAGS[name]
            try:
                flags[s.key] = s.parse(value) if eq else True
            except ValueError as e:
                raise UsageError(f"--{name}: {e}") from None
        else:
            raise UsageError(f"unknown option {arg.partition('=')[0]} (see tailproxy --help)")
        i += 1
    return flags, meta, []


def _handed_over_secrets() -> dict:
    """Secret flags a re-exec moved off argv, parsed as flags again (they keep flag precedence)."""
    out = {}
    for key, value in take_handed_over().items():
        s = BY_KEY.get(key)
        if s is not None and s.secret:
            try:
                out[key] = s.parse(value)
            except ValueError as e:
                raise UsageError(f"--{key.replace('_', '-')}: {e}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags, meta, command = parse_args(argv)
        if from_command_line and meta.get("argv_secrets"):
            reexec_without(argv, meta["argv_secrets"][1], meta["argv_secrets"][0])
        flags.update(_handed_over_secrets())
        if meta.get("help"):
            print(usage())
            return 0
        if meta.get("version"):
            print(version())
            return 0
        subcommand = command[0] if command and not meta.get("explicit") else None
        if subcommand in INFO_SUBCOMMANDS:
            return _info_subcommand(command)
        settings = resolve(flags, dict(os.environ), meta.get("config"), meta.get("profile"))
        if subcommand in MANAGE_SUBCOMMANDS:
            from . import manage   # imported late: it brings asyncio
            return manage.main(command, settings, flags.get("hostname"))
        check_command(settings, command)
        if uses_agent(settings, command):
            check_run(settings)
    except (UsageError, ConfigError) as e:
        print(f"tailproxy: {printable(str(e))}", file=sys.stderr)
        return 2
    if uses_agent(settings, command):   # the identity's shared agent (agent/client.py)
        if not command:
            from .agent.client import run_proxy_attached
            return run_proxy_attached(settings)
        from .agent.client import run_attached
        return run_attached(settings, command)
    from .launcher.launch import run  # imported late: --help and usage errors stay instant
    return run(settings, command)


if __name__ == "__main__":
    sys.exit(main())
