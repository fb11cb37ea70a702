"""Log lines never carry raw control bytes (printable.py and the sinks that use it)."""
from tailproxy.launcher import launch
from tailproxy.printable import printable
from tailproxy.proxy.server import Proxy


def test_plain_text_is_unchanged():
    assert printable("web.example:443 ok up=1.0KiB") == "web.example:443 ok up=1.0KiB"


def test_control_bytes_newlines_and_undecodable_bytes_are_escaped():
    assert printable("a\0b\x1b[2J\r\nc\x7f") == "a\\x00b\\x1b[2J\\x0d\\x0ac\\x7f"
    assert printable(b"n\xffame".decode("utf-8", "surrogateescape")) == "n\\xffame"
    assert printable("\u202eevil") == "\\u202eevil"


def test_our_own_multiline_text_keeps_its_newlines_on_request():
    assert printable("usage:\n  a\x1b", keep_newlines=True) == "usage:\n  a\\x1b"


def test_launcher_log_sinks_escape(capsys):
    launch._say("connect a\0b:17007\nforged line")
    launch._log_line("tailproxy: http a\x1b]0;x\x07:80 ok")
    err = capsys.readouterr().err
    assert err == ("tailproxy: connect a\\x00b:17007\\x0aforged line\n"
                   "tailproxy: http a\\x1b]0;x\\x07:80 ok\n")


def test_proxy_default_log_escapes(capsys):
    Proxy(dialer=None).log("tailproxy: a\0b")
    assert capsys.readouterr().err == "tailproxy: a\\x00b\n"
