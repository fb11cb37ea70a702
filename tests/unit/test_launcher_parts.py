import os
import shutil
import stat

import pytest

from tailproxy.launcher.childenv import child_env
from tailproxy.launcher.program import ProgramError, coverage_warning, locate


def test_child_env_appends_preload_and_drops_secrets():
    env = child_env({"LD_PRELOAD": "/x/other.so", "TS_AUTHKEY": "tskey-secret", "TS_AUTH_KEY": "s",
                     "PATH": "/bin"},
                    preload="/p/libtailproxy.so", channel="/run/c.sock", bypass=["10.0.0.0/8"],
                    verbose=False, proxy_addr=("127.0.0.1", 4000), proxy_auth=("u", "p w"))
    assert env["LD_PRELOAD"] == "/x/other.so:/p/libtailproxy.so"
    assert "TS_AUTHKEY" not in env and "TS_AUTH_KEY" not in env
    assert not any("tskey-secret" in v for v in env.values())
    assert env["TAILPROXY_SOCKET"] == "/run/c.sock"
    assert env["TAILPROXY_BYPASS"] == "10.0.0.0/8"
    assert env["ALL_PROXY"] == env["all_proxy"] == "socks5h://u:p%20w@127.0.0.1:4000"
    assert env["http_proxy"] == env["HTTPS_PROXY"] == "http://u:p%20w@127.0.0.1:4000"
    assert "127.0.0.0/8" in env["NO_PROXY"] and "10.0.0.0/8" in env["no_proxy"]


def test_child_env_without_existing_preload():
    env = child_env({}, preload="/p/l.so", channel="c", bypass=[], verbose=True,
                    proxy_addr=None, proxy_auth=None)
    assert env["LD_PRELOAD"] == "/p/l.so" and env["TAILPROXY_VERBOSE"] == "1"


def test_locate_statuses(tmp_path):
    with pytest.raises(ProgramError) as e:
        locate("surely-no-such-program-xyz", "/usr/bin")
    assert e.value.exit_status == 127
    f = tmp_path / "noexec"
    f.write_text("#!/bin/sh\n")
    with pytest.raises(ProgramError) as e:
        locate(str(f), None)
    assert e.value.exit_status == 126
    assert locate("sh", os.environ["PATH"]).endswith("/sh")


def test_coverage_warning_dynamic_static_setuid_script(tmp_path):
    assert coverage_warning(shutil.which("sh"), None) is None
    # a static ELF: the kernel-ish minimal header with no PT_INTERP
    import struct
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 0x20, 64)          # e_phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)      # e_phentsize, e_phnum
    phdr = struct.pack("<I", 1) + bytes(52)          # PT_LOAD
    static = tmp_path / "static"
    static.write_bytes(bytes(ehdr) + phdr)
    assert "statically linked" in coverage_warning(str(static), None)
    suid = tmp_path / "suid"
    shutil.copy(shutil.which("sh"), suid)
    os.chmod(suid, 0o4755)
    assert "setuid" in coverage_warning(str(suid), None)
    script = tmp_path / "script"
    script.write_text(f"#!{static}\n")
    assert "statically linked" in coverage_warning(str(script), None)


def test_local_networks_from_route_tables(tmp_path):
    from tailproxy.launcher.lan import local_networks
    r4 = tmp_path / "route"
    r4.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                  "eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\n"     # default via gw
                  "eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"     # 198.18.0.0/24
                  "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\n")
    r6 = tmp_path / "ipv6_route"
    r6.write_text("fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
                  "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n"
                  "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                  "fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n")
    assert local_networks(str(r4), str(r6)) == ["198.18.0.0/24", "fd00::/64"]


def test_accepted_routes_in_info_and_ps(monkeypatch, capsys):
    import asyncio
    from tailproxy import manage
    from tailproxy.config import Settings
    from tailproxy.control import accepted_routes, handler
    status = {"Self": {"DNSName": "me.ts.test."}, "TailscaleIPs": ["100.64.0.9"], "Peer": {
        "a": {"DNSName": "router.ts.test.", "PrimaryRoutes": ["198.19.0.0/24", "0.0.0.0/0", "::/0"]},
        "b": {"DNSName": "peer.ts.test."}}}
    assert accepted_routes(status) == [{"route": "198.19.0.0/24", "via": "router.ts.test"}]

    class API:
        def status(self):
            return status

    class FakeNode:
        localapi = API()

    def info(accept):
        settings = Settings(hostname="h", accept_routes=accept)
        return asyncio.run(handler(settings, FakeNode(), None, ["x"], None, print)({"cmd": "info"}))
    assert info(True)["routes"] == [{"route": "198.19.0.0/24", "via": "router.ts.test"}]
    assert info(False)["routes"] == []          # not accepted: not used
    monkeypatch.setattr(manage.control, "running", lambda: [("s", dict(info(True), pid=7))])
    # agents of this uid that run meanwhile (other suites on the machine) are not this test's
    import tailproxy.agent.client
    monkeypatch.setattr(tailproxy.agent.client, "agents", lambda: [])
    manage.ps()
    head, row = capsys.readouterr().out.splitlines()
    assert "ROUTES" in head.split() and "198.19.0.0/24@router.ts.test" in row.split()
