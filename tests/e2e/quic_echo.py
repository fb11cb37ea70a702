"""QUIC over the tailnet for test_quic_tailnet.py (aioquic): `server HOST PORT CERT KEY` answers
each stream with b"echo: " + all it received; `client HOST PORT CAFILE NBYTES` sends NBYTES on one
stream and prints a JSON line with what came back."""
import asyncio
import hashlib
import json
import sys

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived

ALPN = ["tailproxy-echo"]


class Echo(QuicConnectionProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.streams: dict[int, bytearray] = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            buf = self.streams.setdefault(event.stream_id, bytearray())
            buf += event.data
            if event.end_stream:
                self._quic.send_stream_data(event.stream_id, b"echo: " + bytes(buf),
                                            end_stream=True)
                del self.streams[event.stream_id]
                self.transmit()


async def server(host, port, cert, key):
    cfg = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    cfg.load_cert_chain(cert, key)
    await serve(host, int(port), configuration=cfg, create_protocol=Echo)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def client(host, port, cafile, nbytes):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=ALPN)
    cfg.load_verify_locations(cafile)
    payload = bytes(i % 251 for i in range(int(nbytes)))
    async with connect(host, int(port), configuration=cfg) as conn:
        reader, writer = await conn.create_stream()
        writer.write(payload)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 30)
        await conn.ping()
    want = b"echo: " + payload
    print(json.dumps({"bytes": len(data), "same": data == want,
                      "sha256": hashlib.sha256(data).hexdigest()}), flush=True)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    asyncio.run(server(*args) if role == "server" else client(*args))
