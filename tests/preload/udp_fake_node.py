"""A stand-in for the proxy and node in the preload's UDP tests (test_preload_udp.py): it answers
the channel op UDP as the proxy does, and serves each association's loopback endpoint as the node
would, except that instead of relaying to the destination it answers every datagram itself with
b"via <dst>: " + the datagram (so a test sees it took the association). Destinations:
  port 9         -> "send directly" (no endpoint)
  port 13        -> an endpoint that answers one datagram, then is closed (the association
                    ended: the program's socket then meets a closed loopback port)
  198.18.99.5    -> EHOSTUNREACH
  anything else  -> an endpoint
Prints "ready" once listening. usage: udp_fake_node.py CHANNEL_PATH
"""
import errno
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
from tailproxy.proxy import channel_proto as cp  # noqa: E402

LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def serve_endpoint(sock: socket.socket, dst: cp.Address) -> None:
    prefix = f"via {dst}: ".encode()
    while True:
        try:
            data = sock.recv(70000)
            sock.send(prefix + data)
        except ConnectionRefusedError:
            continue            # the program's socket was not there for one datagram
        except OSError:
            return
        if dst.port == 13:
            sock.close()
            return


def answer(req: cp.UdpReq) -> bytes:
    if req.dst.port == 9:
        return cp.encode_udp_reply(0)
    if req.dst.ip == "198.18.99.5":
        return cp.encode_udp_reply(errno.EHOSTUNREACH)
    sock = socket.socket(req.local.af, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK[req.local.family], 0))
    sock.connect(req.local.sockaddr())
    threading.Thread(target=serve_endpoint, args=(sock, req.dst), daemon=True).start()
    ip, port = sock.getsockname()[:2]
    return cp.encode_udp_reply(0, cp.Address(req.local.family, ip, port))


def main() -> None:
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lst.bind(sys.argv[1])
    lst.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = lst.accept()
        with conn:
            req = cp.decode_request(conn.recv(4096))
            if isinstance(req, cp.UdpReq):
                conn.send(answer(req))
            else:
                conn.send(cp.encode_error_reply(0, errno.ENOSYS))


if __name__ == "__main__":
    main()
