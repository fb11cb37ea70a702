"""What an installed CLI offers: --version, `python -m tailproxy`, shell completion generated
from the parser's own tables, `tailproxy help TOPIC`, a light --help path, and a README whose
flags all exist."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tailproxy import __version__, cli, completion, helptopics
from tailproxy.config import SETTINGS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARSER_FLAGS = set(cli._FLAGS) | set(cli._META_FLAGS) | set(cli._SWITCHES)
# a subcommand's own options (`top --once --json`), as its completion lists them
SUBCOMMAND_FLAGS = {w[2:] for sub in cli.completion_spec().subcommands for w in sub.words
                    if w.startswith("--")}


def tp(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tailproxy", *args], capture_output=True,
                          text=True, timeout=60, env=env)


# --- --version -------------------------------------------------------------------------------

def test_version_names_the_package_and_the_pinned_tailscale(tmp_path, monkeypatch):
    (tmp_path / "versions.json").write_text(json.dumps({"tailscale.com": "v9.8.7", "go": "go1.99"}))
    monkeypatch.setenv("TAILPROXY_NATIVE_DIR", str(tmp_path))
    assert cli.version() == f"tailproxy {__version__} (tailscale.com v9.8.7, go1.99)"


def test_version_says_when_the_native_parts_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILPROXY_NATIVE_DIR", str(tmp_path))
    assert cli.version() == f"tailproxy {__version__} (native parts not built)"


def test_version_of_this_build_matches_node_go_mod():
    """`make native` records the tailscale.com version node/go.mod pins."""
    with open(os.path.join(REPO, "node", "go.mod")) as f:
        pinned = re.search(r"^\s*tailscale\.com\s+(v\S+)", f.read(), re.MULTILINE).group(1)
    cp = tp("--version")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith(f"tailproxy {__version__} (tailscale.com {pinned}, go1."), cp.stdout


def test_python_dash_m_runs_the_cli():
    cp = tp("--help")
    assert cp.returncode == 0 and cp.stdout == cli.usage() + "\n"


def test_version_and_help_ignore_a_broken_config_file(tmp_path):
    bad = tmp_path / "config.toml"
    bad.write_text("this is not toml [")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), HOME=str(tmp_path))
    for args in (["--version"], ["help", "config"], ["completion", "bash"]):
        cp = tp("--config", str(bad), *args, env=env)
        assert cp.returncode == 0, (args, cp.stderr)


# --- the --help path stays light ---------------------------------------------------------------

def test_help_imports_nothing_heavy():
    code = ("import sys, runpy; sys.argv = ['tailproxy', '--help']\n"
            "try: runpy.run_module('tailproxy', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy = [m for m in ('asyncio', 'uvloop', 'dns', 'ctypes', 'h11', 'tailproxy.node',"
            " 'json', 'tomllib', 'tailproxy.launcher', 'tailproxy.manage', 'ssl', 'socket')"
            " if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in cp.stderr, cp.stderr


# --- completion ------------------------------------------------------------------------------

def test_completion_spec_covers_exactly_what_the_parser_accepts():
    spec = cli.completion_spec()
    names = [n for o in spec.options for n in o.names]
    assert len(names) == len(set(names))
    assert set(names) == PARSER_FLAGS
    for o in spec.options:
        for n in o.names:
            if n in cli._FLAGS:
                assert (o.value is None) == (cli._FLAGS[n].metavar is None), n
    assert {s.name for s in spec.subcommands} == set(cli.SUBCOMMANDS)


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_every_flag_and_subcommand_is_in_each_script(shell):
    text = cli_out("completion", shell)
    for name in PARSER_FLAGS:
        assert re.search(rf"(--|-l ){re.escape(name)}\b", text), (shell, name)
    for sub in cli.SUBCOMMANDS:
        assert sub in text


def cli_out(*args) -> str:
    cp = tp(*args)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def test_completion_of_an_unknown_shell_is_a_usage_error():
    cp = tp("completion", "tcsh")
    assert cp.returncode == 2 and "bash|zsh|fish" in cp.stderr


def bash_complete(words: list[str], tmp_path) -> list[str]:
    """COMPREPLY of the generated bash function for a command line ending in words[-1]."""
    script = tmp_path / "tailproxy.bash"
    script.write_text(cli_out("completion", "bash"))
    words_q = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    prog = (f"source {script}; COMP_WORDS=({words_q}); COMP_CWORD={len(words) - 1}; "
            "_tailproxy; printf '%s\\n' \"${COMPREPLY[@]}\"")
    cp = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True,
                        text=True, timeout=30, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    return [w for w in cp.stdout.splitlines() if w]


def test_bash_completes_options_subcommands_and_their_words(tmp_path):
    assert set(bash_complete(["tailproxy", "--exit-node"], tmp_path)) == {
        "--exit-node", "--exit-node-allow-lan-access"}
    assert bash_complete(["tailproxy", "exit-node", ""], tmp_path) == ["set", "clear", "list"]
    assert bash_complete(["tailproxy", "--hostname", "x", "completion", "z"], tmp_path) == ["zsh"]
    assert sorted(bash_complete(["tailproxy", "help", ""], tmp_path)) == sorted(
        t.name for t in helptopics.TOPICS)
    assert "exit-node" in bash_complete(["tailproxy", "ex"], tmp_path)


def test_bash_completes_values_and_hands_the_command_over(tmp_path):
    (tmp_path / "my.toml").write_text("")
    assert bash_complete(["tailproxy", "--config", "my"], tmp_path) == ["my.toml"]
    assert bash_complete(["tailproxy", "--hostname", ""], tmp_path) == []
    # --hostname's value is not the command; after `--`, `help` is a program, not a subcommand
    assert "bash" in bash_complete(["tailproxy", "--hostname", "h", "bas"], tmp_path)
    # the words after the command are the program's: files here (no bash-completion loaded)
    assert bash_complete(["tailproxy", "cat", "my"], tmp_path) == ["my.toml"]
    assert bash_complete(["tailproxy", "--", "help", "m"], tmp_path) == ["my.toml"]


def fish_complete(line: str, tmp_path) -> list[str]:
    script = tmp_path / "tailproxy.fish"
    script.write_text(cli_out("completion", "fish"))
    # a throwaway HOME: fish loads its own completions (for the hand-over) but no user config
    cp = subprocess.run(["fish", "-c", f"source {script}; complete -C '{line}'"],
                        capture_output=True, text=True, timeout=30, cwd=tmp_path,
                        env=dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path)))
    assert cp.returncode == 0, cp.stderr
    return [w.split("\t")[0] for w in cp.stdout.splitlines()]


def test_fish_completes_options_subcommands_and_their_words(tmp_path):
    assert shutil.which("fish"), "fish is missing (make deps installs it)"
    assert set(fish_complete("tailproxy --exit-node", tmp_path)) >= {
        "--exit-node", "--exit-node-allow-lan-access"}
    assert sorted(fish_complete("tailproxy exit-node ", tmp_path)) == ["clear", "list", "set"]
    assert fish_complete("tailproxy --timeout 5 completion f", tmp_path) == ["fish"]
    assert fish_complete("tailproxy exit-node set x", tmp_path) == []
    # after the command word, the program's own completion (fish ships one for ls)
    assert "--all" in fish_complete("tailproxy --hostname h ls --al", tmp_path)
    assert "--hostname" not in fish_complete("tailproxy ls --host", tmp_path)
    (tmp_path / "my.toml").write_text("")
    assert fish_complete("tailproxy --config my", tmp_path) == ["my.toml"]


ZSH_PROBE = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z 'PS1="" PROMPT="" RPROMPT=""; TERM=dumb'
zpty -w z "fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -d $1/zcompdump"
zpty -w z 'LISTMAX=1000; setopt nolistbeep nobeep; zstyle ":completion:*" verbose no'
zpty -w z 'echo READY'
zpty -r z line '*READY*'; zpty -r z line '*READY*'
zpty -w -n z "tailproxy $2"$'\C-d'
# wait for the listing: zsh redraws the command line after it, so until the line has come twice
# and 0.2 s passed quietly (or 5 s of silence, at most 30 s); typing on at once would make zsh
# skip the listing, and a fixed or short wait is too short on a loaded machine
out=""; quiet=0
for i in {1..600}; do
  if zpty -r -t z chunk; then out+=$chunk; quiet=0; else (( quiet++ )); fi
  [[ $out == *"tailproxy $2"*"tailproxy $2"* ]] && (( quiet >= 4 )) && break
  (( quiet >= 100 )) && break
  sleep 0.05
done
zpty -w z $'\C-u'"echo DONE"
for i in {1..200}; do
  zpty -r -t z chunk && out+=$chunk
  [[ $out == *DONE*DONE* ]] && break
  sleep 0.05
done
print -r -- "$out"
zpty -d z
"""


def zsh_complete(line: str, tmp_path) -> set[str]:
    """What zsh lists (^D) for `tailproxy LINE`, in an interactive zsh on a pty. A pty session
    that showed no listing at all (zsh took the ^D before it was ready: seen once in ~7 full
    runs on a loaded machine) is tried again, up to twice; what a listing holds is never
    retried."""
    assert shutil.which("zsh"), "zsh is missing (make deps installs it)"
    (tmp_path / "_tailproxy").write_text(cli_out("completion", "zsh"))
    for _ in range(3):
        words = _zsh_listing(line, tmp_path)
        if words:
            return words
    return words


def _zsh_listing(line: str, tmp_path) -> set[str]:
    cp = subprocess.run(["zsh", "-f", "-c", ZSH_PROBE, "probe", str(tmp_path), line],
                        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", cp.stdout).replace("\r", "")
    assert "DONE" in text, cp.stdout + cp.stderr
    assert "_describe" not in text and "bad option" not in text, text
    words = set()
    for row in text.splitlines():
        # skip the echoed command lines and zsh's end-of-line mark (PROMPT_SP: '#' for root)
        if not re.search(r"tailproxy|DONE|READY|^\s*[#%]", row):
            words.update(row.split())
    return words


def test_zsh_completes_options_subcommands_and_hands_over(tmp_path):
    assert zsh_complete("--exit-no", tmp_path) == {"--exit-node", "--exit-node-allow-lan-access"}
    assert zsh_complete("exit-n", tmp_path) == {"exit-node"}
    assert zsh_complete("exit-node ", tmp_path) == {"set", "clear", "list"}
    assert zsh_complete("--timeout 5 completion ", tmp_path) == {"bash", "zsh", "fish"}
    assert zsh_complete("help ", tmp_path) == {t.name for t in helptopics.TOPICS}
    (tmp_path / "my.toml").write_text("")
    assert zsh_complete("--config my", tmp_path) == {"my.toml"}
    # after the command word, the program's own completion (zsh ships one for ls)
    assert "--all" in zsh_complete("--hostname h ls --al", tmp_path)


# --- help topics -----------------------------------------------------------------------------

@pytest.mark.parametrize("topic", [t.name for t in helptopics.TOPICS])
def test_help_topic_pages_list_real_settings(topic):
    text = cli_out("help", topic)
    assert text.startswith(f"tailproxy help {topic}:")
    for word in re.findall(r"--[a-z][a-z0-9-]+", text):
        assert word[2:] in PARSER_FLAGS | SUBCOMMAND_FLAGS, (topic, word)
    for key in helptopics.BY_NAME[topic].keys:
        assert f"config key {key}" in text


def test_help_config_lists_every_setting_and_variable():
    text = cli_out("help", "config")
    for s in SETTINGS:
        assert f"config key {s.key}" in text
        for var in s.env:
            assert var in text


def test_help_without_topic_lists_topics_and_unknown_topic_fails():
    text = cli_out("help")
    for t in helptopics.TOPICS:
        assert f"tailproxy help {t.name}" in text
    cp = tp("help", "nope")
    assert cp.returncode == 2 and "help topics" in cp.stderr


def test_subcommand_names_after_double_dash_are_programs():
    flags, meta, cmd = cli.parse_args(["--", "help"])
    assert meta.get("explicit") and cmd == ["help"]


# --- README ----------------------------------------------------------------------------------

def test_every_tailproxy_flag_the_readme_shows_exists():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    other_programs = {"tcp"}      # `tailscale serve --tcp`
    shown = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", readme)) - other_programs
    assert shown, "the README shows flags"
    assert shown <= PARSER_FLAGS | SUBCOMMAND_FLAGS, shown - PARSER_FLAGS - SUBCOMMAND_FLAGS
