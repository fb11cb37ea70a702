"""The exit-node monitor: a dead exit node is found by missed pings before the control server
calls it offline, and it is passed over while failing over."""
import asyncio

from tailproxy.launcher import exitnodes
from tailproxy.launcher.exitnodes import ExitNodes
from tailproxy.node.exitnode import ExitNodeError

E1 = {"ID": "n1", "HostName": "exit1", "DNSName": "exit1.ts.test.", "ExitNodeOption": True,
      "Online": True, "TailscaleIPs": ["100.64.0.5"]}
E2 = {"ID": "n2", "HostName": "exit2", "DNSName": "exit2.ts.test.", "ExitNodeOption": True,
      "Online": True, "TailscaleIPs": ["100.64.0.6"]}


class FakeAPI:
    def __init__(self, node):
        self.node = node

    def status(self, peers=True):
        cur = self.node.current
        return {"ExitNodeStatus": {"ID": cur["ID"], "Online": True,
                                   "TailscaleIPs": [cur["TailscaleIPs"][0] + "/32"]}}

    def ping(self, ip, timeout):
        self.node.pings.append(ip)
        return ip not in self.node.dead


class FakeNode:
    def __init__(self):
        self.current, self.dead, self.pings, self.sets = E2, set(), [], []
        self.localapi = FakeAPI(self)

    def set_exit_node(self, name, allow_lan, timeout, avoid=frozenset()):
        peer = {"exit1": E1, "exit2": E2}[name]
        self.sets.append((name, set(avoid)))
        if peer["ID"] in avoid:
            raise ExitNodeError("does not answer")
        self.current = peer
        return peer


def run_checks(n, exits):
    async def go():
        for _ in range(n):
            await exits._check()
    asyncio.run(go())


def test_answering_exit_node_is_kept():
    node = FakeNode()
    exits = ExitNodes(node, ["exit2", "exit1"], False, lambda m: None)
    exits.current = E2
    run_checks(3, exits)
    assert node.sets == [] and node.pings == ["100.64.0.6"] * 3


def test_silent_exit_node_fails_over_after_missed_pings_and_is_passed_over():
    node = FakeNode()
    said, changes = [], []
    exits = ExitNodes(node, ["exit2", "exit1"], False, said.append, on_change=lambda: changes.append(1))
    exits.current = E2
    node.dead.add("100.64.0.6")          # exit2 died; the control server still says Online
    run_checks(exitnodes.PING_MISSES - 1, exits)
    assert node.sets == []               # one missed ping is not enough
    run_checks(1, exits)
    assert node.sets == [("exit2", {"n2"}), ("exit1", {"n2"})]   # exit2 passed over
    assert exits.current is E1 and node.current is E1 and changes
    assert "exit node exit2" in said[0] and "now using exit1" in said[0]
