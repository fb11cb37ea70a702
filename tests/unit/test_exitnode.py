import pytest

from tailproxy.node.exitnode import ExitNodeError, check_usable, find_peer, pick_auto


def peer(id, dns, host, ips, option=True, online=True, current=False):
    return {"ID": id, "DNSName": dns, "HostName": host, "TailscaleIPs": ips,
            "ExitNodeOption": option, "Online": online, "ExitNode": current}


STATUS = {"Peer": {
    "k1": peer("nA", "exit.ts.test.", "exit", ["100.64.0.2", "fd7a:115c:a1e0::2"]),
    "k2": peer("nB", "exit2.ts.test.", "exit2", ["100.64.0.5", "fd7a:115c:a1e0::5"], online=False),
    "k3": peer("nC", "peer.ts.test.", "peer", ["100.64.0.1"], option=False),
    "k4": peer("nD", "dup.ts.test.", "twin", ["100.64.0.7"]),
    "k5": peer("nE", "dup-1.ts.test.", "twin", ["100.64.0.8"]),
}}


@pytest.mark.parametrize("name", ["exit", "exit.ts.test", "exit.ts.test.", "EXIT", "100.64.0.2",
                                  "fd7a:115c:a1e0::2", "fd7a:115c:a1e0:0::2", "nA"])
def test_every_spelling_finds_the_peer(name):
    assert find_peer(STATUS, name)["ID"] == "nA"


def test_unknown_lists_available_exit_nodes():
    with pytest.raises(ExitNodeError, match=r"no such peer.*exit nodes available: .*exit.ts.test"):
        find_peer(STATUS, "nosuch")


def test_ambiguous_lists_candidates():
    with pytest.raises(ExitNodeError, match=r"ambiguous.*dup-1.ts.test \(nE\).*dup.ts.test \(nD\)"):
        find_peer(STATUS, "twin")
    assert find_peer(STATUS, "dup.ts.test")["ID"] == "nD"


def test_auto_picks_an_online_exit_node():
    assert pick_auto(STATUS)["ID"] in ("nA", "nD", "nE")
    st = {"Peer": {"a": peer("x", "x.t.", "x", [], online=False)}}
    with pytest.raises(ExitNodeError, match="no online exit node"):
        pick_auto(st)


def test_usability_messages():
    check_usable(STATUS["Peer"]["k1"], None)
    with pytest.raises(ExitNodeError, match="offline"):
        check_usable(STATUS["Peer"]["k2"], None)
    with pytest.raises(ExitNodeError, match="not an exit node"):
        check_usable(STATUS["Peer"]["k3"], {"Node": {"Hostinfo": {}}})
    with pytest.raises(ExitNodeError, match="has not approved it"):
        check_usable(STATUS["Peer"]["k3"], {"Node": {"Hostinfo": {"RoutableIPs": ["0.0.0.0/0", "::/0"]}}})


def test_route_not_confirmed_times_out_with_its_message(tmp_path):
    from tailproxy.node import Node, NodeConfig

    class API:
        def status(self, peers=True):
            return {"Peer": {"k1": STATUS["Peer"]["k1"]}}   # ExitNodeStatus never shows up

        def edit_prefs(self, masked):
            self.prefs = masked

    node = Node(NodeConfig(state_dir=str(tmp_path)))
    node._api, node._running = API(), True
    with pytest.raises(ExitNodeError, match=r"timed out after 0.3s waiting for the route through "
                                            r"exit node 'exit.ts.test'"):
        node.set_exit_node("exit", timeout=0.3)
    assert node._api.prefs["ExitNodeID"] == "nA"
