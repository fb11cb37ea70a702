#!/bin/sh
# The main job, on the local test tailnet (run by `make demo` inside python -m tailproxy.testnet):
# unmodified programs on a host with no Tailscale reach a tailnet peer through tailproxy.
set -eu
info() { python3 -c "import json,sys; d=json.load(open('$TESTNET_INFO')); print(eval(sys.argv[1]))" "$1"; }
PEER_IP=$(info 'd["peers"]["peer"]["ipv4"]')
PEER_IP6=$(info 'd["peers"]["peer"]["ipv6"]')
HTTP=$(info 'd["peers"]["peer"]["http_port"]')
ECHO=$(info 'd["peers"]["peer"]["echo_port"]')
TP="${TAILPROXY:-.venv/bin/tailproxy}"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "curl http://$PEER_IP:$HTTP/   (without tailproxy: this host has no route to the tailnet)"
curl -sS -m 3 "http://$PEER_IP:$HTTP/" || echo "(failed, as expected)"

step "tailproxy curl http://$PEER_IP:$HTTP/"
"$TP" curl -sS --noproxy '*' "http://$PEER_IP:$HTTP/"

step "tailproxy curl -g http://[$PEER_IP6]:$HTTP/"
"$TP" curl -sS -g --noproxy '*' "http://[$PEER_IP6]:$HTTP/"

step "tailproxy curl http://peer:$HTTP/   (a MagicDNS name; no system Tailscale, no /etc/hosts entry)"
"$TP" curl -sS --noproxy '*' "http://peer:$HTTP/"

INET=$(info 'd["internet"]["name"]')
DNSLOG=$(info 'd["dns_log"]')
before=$(wc -l < "$DNSLOG")
step "tailproxy --exit-node=exit curl http://$INET/   (only the exit node can reach it; the name is resolved there)"
"$TP" --exit-node=exit curl -sS --noproxy '*' "http://$INET/"
echo "(queries that reached this host's DNS server meanwhile: $(( $(wc -l < "$DNSLOG") - before )))"

PNS=$(info 'd["peers"]["peer"]["netns"]')
SOCKS=$(info 'd["peers"]["peer"]["socks5"]')
step "tailproxy --hostname demo-web --export-listeners python3 -m http.server 8000   (then fetched from peer)"
"$TP" --hostname demo-web --export-listeners python3 -m http.server 8000 >/dev/null 2>/tmp/demo-export.$$ &
TPPID=$!
for i in $(seq 100); do grep -q "exported port 8000" /tmp/demo-export.$$ && break; sleep 0.1; done
cat /tmp/demo-export.$$
ip netns exec "$PNS" curl -sS -m 10 --socks5-hostname "$SOCKS" http://demo-web:8000/ | head -3
kill $TPPID; wait $TPPID 2>/dev/null || true
rm -f /tmp/demo-export.$$

step "tailproxy --verbose python3 (asyncio, non-blocking connects) → echo service on $PEER_IP:$ECHO"
"$TP" --verbose python3 - "$PEER_IP" "$ECHO" <<'PY'
import asyncio, sys
async def one(i):
    r, w = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
    w.write(b"hello %d\n" % i); await w.drain()
    line = await r.readline(); w.close()
    return line.decode().strip()
async def main():
    print(await asyncio.gather(*(one(i) for i in range(3))))
asyncio.run(main())
PY

step "tailproxy sh -c 'nc -z -w 3 $PEER_IP 1; echo \$?'   (closed port: refused, not a hang)"
"$TP" sh -c "nc -z -w 3 $PEER_IP 1; echo exit=\$?"
