"""Join a tailnet from a plain script and talk to a peer: python library.py PEER PORT"""
import asyncio, os, sys, tempfile
from tailproxy.node import Node, NodeConfig

async def main(peer: str, port: int) -> None:
    cfg = NodeConfig(state_dir=tempfile.mkdtemp(), hostname="library-example", ephemeral=True,
                     authkey=os.environ["TS_AUTHKEY"], control_url=os.environ.get("TAILPROXY_CONTROL_URL"))
    with Node(cfg) as node:
        node.up(timeout=60)
        sock, loop = await node.dial(peer, port), asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"GET / HTTP/1.0\r\nHost: " + peer.encode() + b"\r\n\r\n")
        while chunk := await loop.sock_recv(sock, 65536):
            sys.stdout.write(chunk.decode(errors="replace"))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
