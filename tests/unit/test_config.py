import pytest

from tailproxy.config import BY_KEY, ConfigError, resolve


def write(tmp_path, text):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return str(p)


def test_precedence_flags_env_profile_file(tmp_path):
    path = write(tmp_path, """
hostname = "filehost"
timeout = 5
verbose = true
[profiles.work]
hostname = "profhost"
timeout = 7
control_url = "https://prof.test"
""")
    env = {"TAILPROXY_CONTROL_URL": "https://env.test", "XDG_STATE_HOME": str(tmp_path)}
    s = resolve({"timeout": 9.0}, env, path, "work")
    assert s["hostname"] == "profhost"          # profile over file
    assert s["control_url"] == "https://env.test"  # env over profile
    assert s["timeout"] == 9.0                  # flag over everything
    assert s["verbose"] is True                 # file default kept
    assert s["state_dir"] == str(tmp_path / "tailproxy" / "profhost")


def test_authkey_from_either_env_name(tmp_path):
    base = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve({}, dict(base, TS_AUTHKEY="k1"), None, None)["authkey"] == "k1"
    assert resolve({}, dict(base, TS_AUTH_KEY="k2"), None, None)["authkey"] == "k2"


def test_missing_default_file_is_fine_but_explicit_is_not(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve({}, env, None, None)["hostname"] == "tailproxy"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({}, env, str(tmp_path / "nope.toml"), None)


@pytest.mark.parametrize("text, needle", [
    ('hostnme = "x"', "unknown key 'hostnme'"),
    ('timeout = "soon"', "bad value for 'timeout'"),
    ('control_url = "ftp://x"', "bad value for 'control_url'"),
    ('bypass = ["10.0.0.0/8", "zzz"]', "'zzz' is not a CIDR"),
    ('[profiles.a]\nfoo = 1', r"\[profiles.a\]: unknown key 'foo'"),
    ('hostname = ', "not valid TOML"),
])
def test_bad_file_errors_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve({}, {}, write(tmp_path, text), None)


def test_unknown_profile_lists_profiles(tmp_path):
    path = write(tmp_path, "[profiles.a]\n[profiles.b]\n")
    with pytest.raises(ConfigError, match=r"no profile 'c' \(profiles: a, b\)"):
        resolve({}, {}, path, "c")


def test_bad_env_value_names_variable(tmp_path):
    with pytest.raises(ConfigError, match="TAILPROXY_TIMEOUT"):
        resolve({}, {"TAILPROXY_TIMEOUT": "x", "XDG_CONFIG_HOME": str(tmp_path)}, None, None)


def test_secrets_by_reference_from_a_file_anywhere(tmp_path):
    key = tmp_path / "key"
    key.write_text("tskey-from-file\n")
    path = write(tmp_path, f'authkey = "file:{key}"\nsocks5_auth = "file:{key}"\n')
    with pytest.raises(ConfigError, match="socks5-auth: expected USER:PASSWORD"):
        resolve({}, {}, path, None)
    (tmp_path / "cred").write_text("u:p")
    s = resolve({"socks5_auth": BY_KEY["socks5_auth"].parse(f"file:{tmp_path / 'cred'}")}, {},
                path, None)
    assert s["authkey"] == "tskey-from-file" and s["socks5_auth"] == ("u", "p")


def test_a_missing_secret_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="authkey: cannot read /nonexistent/k"):
        resolve({}, {"TS_AUTHKEY": "file:/nonexistent/k"}, None, None)


def test_settings_are_typed_and_keep_secrets_out_of_repr(tmp_path):
    from tailproxy.config import SETTINGS, Settings
    assert list(Settings.__annotations__) == [s.key for s in SETTINGS]
    s = resolve({"authkey": "tskey-secret", "socks5_auth": ("u", "pw-secret")},
                {"XDG_CONFIG_HOME": str(tmp_path)}, None, None)
    assert isinstance(s, Settings) and s.authkey == "tskey-secret" and s.timeout == 60.0
    assert "tskey-secret" not in repr(s) and "pw-secret" not in repr(s)
    with pytest.raises(AttributeError, match="read-only"):
        s.hostname = "x"
    assert s.replace(hostname="x").hostname == "x" and s.hostname != "x"
    assert s.replace(hostname="x") != s and s.replace() == s
    with pytest.raises(TypeError, match="no key 'nosuch'"):
        Settings(nosuch=1)


@pytest.mark.parametrize("kw, needle", [
    ({"no_tailnet": True, "exit_node": ["x"]}, "--no-tailnet cannot be combined"),
    ({"no_tailnet": True, "tailnet_only": True}, "--no-tailnet cannot be combined"),
    ({"no_tailnet": True, "export_listeners": True}, "--no-tailnet cannot be combined"),
    ({"export_max": 2}, "need --export-listeners"),
    ({"export_proxy_protocol": True}, "need --export-listeners"),
    ({"no_tailnet": True, "dns": "tailnet"}, "--dns=tailnet needs the tailnet"),
])
def test_flag_combinations_refused(kw, needle):
    from tailproxy.config import Settings, check_run
    with pytest.raises(ConfigError, match=needle):
        check_run(Settings(**kw))
    check_run(Settings())
    check_run(Settings(export_listeners=True, export_max=2))
