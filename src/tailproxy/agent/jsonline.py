"""JSON for the control socket through CPython's `_json` accelerator directly.

`import json` brings `re` (and `enum`, `functools`, `collections` with it): ~18 ms of the 50 ms
an attaching run may take from start to its program's exec. The accelerator is what `json`
itself uses for the work; only the module around it is skipped. Same text as json.dumps(value)
and the same values as json.loads(text) for what the control protocol carries (objects,
arrays, strings, numbers, true/false/null); bad input raises ValueError (json's
JSONDecodeError). Without the accelerator (another Python), plain `json`."""
from __future__ import annotations

try:
    import _json
except ImportError:         # pragma: no cover (CPython always has it)
    _json = None

_WHITESPACE = " \t\n\r"


def _not_serializable(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _constant(name: str) -> float:
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


class _Context:
    """What the accelerator's scanner reads off json.JSONDecoder (its defaults)."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)
    memo: dict = {}


if _json is not None:
    _encode = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii, None,
                                 ": ", ", ", False, False, True)
    _scan = _json.make_scanner(_Context())


def dumps(value) -> str:
    if _json is None:
        import json
        return json.dumps(value)
    return "".join(_encode(value, 0))


def loads(text: str | bytes):
    if _json is None:
        import json
        return json.loads(text)
    if isinstance(text, (bytes, bytearray)):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8") from None
    text = text.strip(_WHITESPACE)
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("expecting a JSON value") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at {end}")
    return value
