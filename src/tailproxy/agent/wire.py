"""What travels between a launcher and its agent: the settings (once, on the agent's stdin, so
the auth key is on no argv and in no environment), each program's own policy (with its attach
request) and the JSON lines of the control socket."""
from __future__ import annotations

import math

from ..config import AGENT_WIDE, BY_KEY, PER_PROGRAM, Settings
from . import jsonline as json     # json's own functions, without its imports

_TUPLES = ("socks5", "socks5_auth")
_PORT_LISTS = ("export_allow_ports", "export_deny_ports")


def _plain(value):
    if isinstance(value, float) and math.isinf(value):
        return "forever"
    return value


def settings_to_json(settings: Settings) -> str:
    return json.dumps({k: _plain(v) for k, v in settings.as_dict().items()})


def settings_from_json(text: str) -> Settings:
    values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError("expected a JSON object of settings")
    values = {k: v for k, v in values.items() if k in BY_KEY}
    for key in _TUPLES:
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    for key in _PORT_LISTS:
        if values.get(key) is not None:
            values[key] = [tuple(r) for r in values[key]]
    if values.get("linger") == "forever":
        values["linger"] = math.inf
    return Settings(**values)


def agent_wide(settings: Settings) -> dict:
    """The settings a program must share with the agent it joins, in comparable JSON form."""
    return json.loads(json.dumps({k: _plain(getattr(settings, k)) for k in AGENT_WIDE}))


def differences(mine: dict, theirs: dict) -> list[str]:
    """The agent-wide keys on which two programs disagree, as flags."""
    return ["--" + k.replace("_", "-") for k in AGENT_WIDE if mine.get(k) != theirs.get(k)]


def policy_of(settings: Settings) -> dict:
    """A program's policy as its attach request carries it."""
    return json.loads(json.dumps({k: getattr(settings, k) for k in PER_PROGRAM}))
