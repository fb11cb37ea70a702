import asyncio

import pytest

from tailproxy.exporter.exporter import Exporter
from tailproxy.exporter.listening import loopback_listeners
from tailproxy.exporter.ports import PortFilter, PortSpecError, parse_ports


def test_parse_ports():
    assert parse_ports("3000,8080,10000-10100") == [(3000, 3000), (8080, 8080), (10000, 10100)]
    assert parse_ports(" 22 ") == [(22, 22)]


@pytest.mark.parametrize("spec, needle", [("", "empty item"), ("80,", "empty item"),
                                          ("http", "'http' is not a port"), ("0", "1-65535"),
                                          ("70000", "1-65535"), ("90-80", "start is after"),
                                          ("8-", "not a port")])
def test_bad_port_specs(spec, needle):
    with pytest.raises(PortSpecError, match=needle):
        parse_ports(spec)


def test_filter_deny_wins_and_max():
    f = PortFilter(parse_ports("8000-9000"), parse_ports("8080"), max_exports=2)
    assert f.refusal(8001, 0) is None
    assert "deny" in f.refusal(8080, 0)
    assert "allow" in f.refusal(22, 0)
    assert "--export-max=2" in f.refusal(8002, 2)
    assert PortFilter(None, None, None).refusal(1, 100) is None


def test_proc_net_tcp_parsing(tmp_path):
    v4 = tmp_path / "tcp"
    v4.write_text(
        "  sl  local_address rem_address   st ...\n"
        "   0: 0100007F:1F40 00000000:0000 0A 0\n"      # 127.0.0.1:8000 LISTEN
        "   1: 0400120A:0050 00000000:0000 0A 0\n"      # 10.18.0.4:80 LISTEN (not loopback)
        "   2: 0100007F:1F41 0100007F:9999 01 0\n")     # established
    v6 = tmp_path / "tcp6"
    v6.write_text(
        "  sl  local_address ...\n"
        "   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 0\n"
        "   1: 0000000000000000FFFF00000100007F:0BB9 00000000000000000000000000000000:0000 0A 0\n")
    assert loopback_listeners((str(v4), str(v6))) == {(4, 8000), (6, 3000), (6, 3001)}


class FakeNode:
    class API:
        def status(self, peers=True):
            return {"Self": {"DNSName": "tp.ts.test."}, "TailscaleIPs": ["100.64.0.9", "fd7a::9"]}

    def __init__(self):
        self.localapi = self.API()
        self.serve = {}

    def serve_tcp(self, port, handler):
        if handler is None:
            self.serve.pop(port, None)
        else:
            self.serve[port] = handler


def test_exporter_lifecycle_with_kernel_truth():
    node, said, live = FakeNode(), [], {(4, 8000)}

    async def scenario():
        ex = Exporter(node, PortFilter(None, parse_ports("22"), 2), proxy_protocol=True,
                      say=said.append, poll_interval=0.01, listeners=lambda: set(live))
        await ex.start()
        await ex.on_listen(4, 8000)
        assert node.serve[8000] == {"TCPForward": "127.0.0.1:8000", "ProxyProtocol": 2}
        assert "http://tp.ts.test:8000/" in said[-1]
        await ex.on_listen(4, 22)
        assert 22 not in node.serve and "deny" in said[-1]
        live.add((6, 9000))
        await ex.on_listen(6, 9000)
        assert node.serve[9000]["TCPForward"] == "[::1]:9000"
        live.add((4, 9100))
        await ex.on_listen(4, 9100)
        assert 9100 not in node.serve and "--export-max" in said[-1]
        live.discard((4, 8000))             # last listener gone: the poller notices
        await asyncio.sleep(0.1)
        assert 8000 not in node.serve
        await ex.close()
        assert node.serve == {}
    asyncio.run(scenario())
