"""Pure parts of the testnet: config, argv wrapping, readiness logic, TLS, error messages."""
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from tailproxy.testnet import binaries, control, hosts, netns, procs, tls
from tailproxy.testnet import __main__ as testnet_cli


class _Certs:
    ca_cert, cert, key = "/r/ca.pem", "/r/server.pem", "/r/server.key"


def test_headscale_config_stays_local():
    cfg = control.headscale_config("/r", "198.18.0.1", _Certs, "ts.test", "/r/policy.json")
    assert cfg["server_url"] == "https://198.18.0.1"
    assert cfg["listen_addr"] == "198.18.0.1:443"
    assert cfg["derp"]["urls"] == [] and cfg["derp"]["paths"] == []
    assert cfg["derp"]["auto_update_enabled"] is False
    assert cfg["derp"]["server"]["enabled"] is True
    assert cfg["derp"]["server"]["stun_listen_addr"] == "198.18.0.1:3478"
    assert cfg["disable_check_updates"] is True
    assert cfg["logtail"]["enabled"] is False
    assert cfg["dns"]["magic_dns"] is True and cfg["dns"]["base_domain"] == "ts.test"
    assert cfg["database"]["sqlite"]["path"].startswith("/r/")
    assert cfg["tls_cert_path"] == "/r/server.pem"
    for key in ("metrics_listen_addr", "grpc_listen_addr"):
        assert cfg[key].startswith("127.0.0.1:")


def test_policy_allows_all():
    assert control.POLICY["acls"] == [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]


def test_wrap_binds_files_then_execs_argv(tmp_path):
    argv = netns.wrap("tn1-client", {"/etc/resolv.conf": "/x/resolv", "/etc/hosts": "/x/hosts"},
                      ["echo", "a b", "$HOME"])
    assert argv[:8] == ["ip", "netns", "exec", "tn1-client", "unshare", "-m", "--propagation", "private"]
    # Run the same shell snippet with mount replaced by echo, to check the argument plumbing.
    script = argv[argv.index("-c") + 1].replace("mount --bind", "echo BIND")
    r = subprocess.run(["sh", "-c", script, *argv[argv.index("-c") + 2:]], capture_output=True, text=True)
    assert r.stdout.splitlines() == ["BIND /x/resolv /etc/resolv.conf", "BIND /x/hosts /etc/hosts", "a b $HOME"]


def test_wrap_without_binds():
    argv = netns.wrap("ns", {}, ["true"])
    script = argv[argv.index("-c") + 1]
    assert script == 'shift 0 && exec "$@"'


def _st(state="Running", peers=()):
    return {"BackendState": state,
            "Peer": {f"k{i}": {"HostName": h, "Online": on, "ExitNodeOption": ex}
                     for i, (h, on, ex) in enumerate(peers)}}


def test_mesh_problems():
    ok = {"peer": _st(peers=[("exit", True, True)]), "exit": _st(peers=[("peer", True, False)])}
    assert hosts.mesh_problems(ok, ["exit"]) == []
    assert hosts.mesh_problems({"peer": None, "exit": ok["exit"]}, ["exit"]) == ["peer: no status"]
    starting = dict(ok, peer=_st("Starting"))
    assert hosts.mesh_problems(starting, ["exit"]) == ["peer: Starting"]
    noexit = dict(ok, peer=_st(peers=[("exit", True, False)]))
    assert hosts.mesh_problems(noexit, ["exit"]) == ["peer: exit not an exit node option yet"]
    offline = dict(ok, exit=_st(peers=[("peer", False, False)]))
    assert hosts.mesh_problems(offline, ["exit"]) == ["exit: sees peer offline"]
    missing = dict(ok, exit=_st())
    assert hosts.mesh_problems(missing, ["exit"]) == ["exit: does not see peer"]


def test_self_info():
    st = {"Self": {"TailscaleIPs": ["100.64.0.2", "fd7a:115c:a1e0::2"], "DNSName": "peer.ts.test."}}
    assert hosts.self_info(st) == {"ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::2", "fqdn": "peer.ts.test"}


def test_part_failed_names_part_and_shows_log_tail(tmp_path):
    log = tmp_path / "headscale.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    e = procs.PartFailed("headscale", "exited with status 1", str(log))
    text = str(e)
    assert text.startswith("testnet: headscale: exited with status 1")
    assert "line 99" in text and "line 10\n" not in text


def test_run_raises_part_failed_with_output():
    with pytest.raises(procs.PartFailed) as ei:
        procs.run("thing", ["sh", "-c", "echo oops >&2; exit 3"])
    assert "thing" in str(ei.value) and "oops" in str(ei.value) and "status 3" in str(ei.value)


def test_procs_stop_all_kills_group(tmp_path):
    p = procs.Procs(str(tmp_path))
    proc = p.start("sleeper", ["sh", "-c", "sleep 100 & sleep 100; wait"], dict(os.environ))
    p.check("sleeper")
    p.stop_all(grace=1)
    assert not proc.alive()
    import time
    deadline = time.monotonic() + 5  # the orphaned sleep is a zombie until init reaps it
    with pytest.raises(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.02)


def test_pin_hash_changes_with_go_sum(tmp_path):
    (tmp_path / "go.mod").write_text("module x\n")
    a = binaries._pin_hash(str(tmp_path))
    (tmp_path / "go.sum").write_text("x v1 h1:abc\n")
    assert binaries._pin_hash(str(tmp_path)) != a


def test_stale_pattern():
    assert netns._STALE_RE.match("tn123-client")
    assert not netns._STALE_RE.match("mytn123-client")
    assert not netns._STALE_RE.match("tnabc-client")


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")
def test_certs_verify_by_ip(tmp_path):
    certs = tls.make_certs(str(tmp_path), "127.0.0.1")
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(certs.cert, certs.key)
    cli_ctx = ssl.create_default_context(cafile=certs.ca_cert)
    ls = socket.create_server(("127.0.0.1", 0))

    def serve():
        c, _ = ls.accept()
        with srv_ctx.wrap_socket(c, server_side=True) as s:
            s.sendall(b"ok")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with socket.create_connection(ls.getsockname(), timeout=5) as raw:
        with cli_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.recv(2) == b"ok"
    t.join(5)
    ls.close()


def test_cli_requires_cmd(capsys):
    with pytest.raises(SystemExit) as ei:
        testnet_cli.main(["--"])
    assert ei.value.code == 2
    assert "missing CMD" in capsys.readouterr().err


def test_services_module_help():
    r = subprocess.run([sys.executable, "-m", "tailproxy.testnet.services", "--help"], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0 and "echo" in r.stdout and "http" in r.stdout


def test_prune_stale_dirs_only_removes_dead_runs_of_ours(tmp_path):
    dead = 2 ** 22 + 12345  # above pid_max defaults: never alive
    ours = tmp_path / f"tn{dead}-abc_1"
    (ours / "logs").mkdir(parents=True)
    not_ours = tmp_path / f"tn{dead}-xyz"
    not_ours.mkdir()  # no logs/: leave it
    alive = tmp_path / f"tn{os.getpid()}-def"
    (alive / "logs").mkdir(parents=True)
    assert netns.prune_stale_dirs(str(tmp_path)) == [str(ours)]
    assert not ours.exists() and not_ours.exists() and alive.exists()


def test_current_is_false_for_unknown_namespace():
    assert netns.current_is("tn0-no-such-namespace") is False


def test_mesh_problems_wait_for_the_subnet_router():
    def st(peers):
        return {"BackendState": "Running", "Peer": {h: dict(Online=True, HostName=h, **kw)
                                                    for h, kw in peers.items()}}
    routes = {"exit": ["198.19.0.0/24"]}
    ok = {"peer": st({"exit": {"ExitNodeOption": True, "PrimaryRoutes": ["198.19.0.0/24"]}}),
          "exit": st({"peer": {}})}
    assert hosts.mesh_problems(ok, ["exit"], routes) == []
    early = dict(ok, peer=st({"exit": {"ExitNodeOption": True}}))
    assert hosts.mesh_problems(early, ["exit"], routes) == \
        ["peer: exit not the router of 198.19.0.0/24 yet"]
    assert hosts.mesh_problems(early, ["exit"]) == []


def test_the_subnet_router_advertises_its_routes():
    n = hosts.Node("exit", "ns", "198.18.0.3", "/d", exit_node=True, routes=("198.19.0.0/24",),
                   wrap=lambda a: a, bins={"tailscale": "ts"})
    argv = n.up_argv("https://c", "k")
    assert "--advertise-exit-node" in argv and "--advertise-routes=198.19.0.0/24" in argv
    assert "--advertise-routes" not in " ".join(hosts.Node("p", "ns", "x", "/d", wrap=lambda a: a,
                                                           bins={"tailscale": "ts"}).up_argv("u", "k"))
