import pytest

from tailproxy.cli import UsageError, main, parse_args


def test_options_then_command_passes_rest_untouched():
    flags, meta, cmd = parse_args(["--verbose", "curl", "--verbose", "-x", "--", "y"])
    assert flags == {"verbose": True}
    assert cmd == ["curl", "--verbose", "-x", "--", "y"]


def test_double_dash_ends_options_even_for_option_like_names():
    flags, _, cmd = parse_args(["--hostname", "a", "--", "--verbose"])
    assert flags == {"hostname": "a"} and cmd == ["--verbose"]


def test_single_dash_seed_spellings_and_equals_form():
    flags, _, cmd = parse_args(["-verbose", "-hostname=box", "-login-server", "https://c.test/", "x"])
    assert flags == {"verbose": True, "hostname": "box", "control_url": "https://c.test"}
    assert cmd == ["x"]


def test_bypass_repeats_accumulate():
    flags, _, _ = parse_args(["--bypass", "10.0.0.0/8", "--bypass=fd00::/8", "x"])
    assert flags["bypass"] == ["10.0.0.0/8", "fd00::/8"]


@pytest.mark.parametrize("argv, needle", [
    (["--frob", "x"], "unknown option --frob"),
    (["--hostname"], "needs a value"),
    (["--bypass", "nope", "x"], "'nope' is not a CIDR"),
    (["--timeout", "-1", "x"], "--timeout"),
    (["--hostname", "bad name", "x"], "--hostname"),
])
def test_usage_errors_name_the_option(argv, needle):
    with pytest.raises(UsageError, match=needle):
        parse_args(argv)


def test_main_usage_errors_exit_2(capsys):
    assert main(["--frob"]) == 2
    assert "unknown option --frob" in capsys.readouterr().err
    assert main([]) == 2
    assert "no command given" in capsys.readouterr().err


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--hostname", "--authkey", "--control-url", "--login-server", "--state-dir",
                 "--ephemeral", "--verbose", "--bypass", "--timeout", "--config", "--profile",
                 "--no-tailnet", "--socks5"):
        assert flag in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("tailproxy ")


def test_socks5_with_command_is_an_error(capsys):
    assert main(["--socks5", "127.0.0.1:1080", "curl"]) == 2
    assert "takes no command" in capsys.readouterr().err


def test_a_literal_secret_on_argv_is_noted_for_moving_off_it():
    flags, meta, cmd = parse_args(["--verbose", "--authkey", "tskey-x", "--socks5-auth=u:p", "c"])
    assert flags["authkey"] == "tskey-x" and flags["socks5_auth"] == ("u", "p")
    moved, drop = meta["argv_secrets"]
    assert moved == {"authkey": "tskey-x", "socks5_auth": "u:p"} and drop == {1, 2, 3}
    assert cmd == ["c"]


def test_secret_references_stay_on_argv():
    _, meta, _ = parse_args(["--authkey", "file:/k", "--socks5-auth", "-", "c"])
    assert "argv_secrets" not in meta


def test_handed_over_secrets_count_as_flags(monkeypatch, tmp_path):
    import os
    from tailproxy import cli
    r, w = os.pipe()
    os.write(w, b'{"authkey": "tskey-moved", "hostname": "not-a-secret"}')
    os.close(w)
    monkeypatch.setenv("_TAILPROXY_SECRETS_FD", str(r))
    assert cli._handed_over_secrets() == {"authkey": "tskey-moved"}
    assert "_TAILPROXY_SECRETS_FD" not in os.environ
    try:
        os.fstat(r)
        raise AssertionError("the handover pipe was left open")
    except OSError:
        pass


def test_accept_routes_flag_env_and_config_key(tmp_path):
    from tailproxy.config import resolve
    base = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve({}, base, None, None)["accept_routes"] is False          # Linux's default
    flags, _, cmd = parse_args(["--accept-routes", "-accept-routes=false", "x"])
    assert flags == {"accept_routes": False} and cmd == ["x"]
    flags, _, _ = parse_args(["--accept-routes", "x"])
    assert resolve(flags, base, None, None)["accept_routes"] is True
    assert resolve({}, dict(base, TAILPROXY_ACCEPT_ROUTES="1"), None, None)["accept_routes"] is True
    cfg = tmp_path / "c.toml"
    cfg.write_text("accept_routes = true\n[profiles.p]\naccept-routes = false\n")
    assert resolve({}, base, str(cfg), None)["accept_routes"] is True
    assert resolve({}, base, str(cfg), "p")["accept_routes"] is False
