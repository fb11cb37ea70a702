#!/bin/sh
# Where the tailproxy process spends its CPU while a program makes tailnet connections: `perf
# record` of the tailproxy process during a `tcpbench connlat` of N connects to the echo service
# on `peer` (port 7), then `perf report` by shared object (libpython / libtailproxy-node.so /
# kernel). On the local tailnet, with perf installed (Debian: linux-perf):
#
#   python -m tailproxy.testnet -- sh bench/perf_connect.sh [N]
set -e
N=${1:-3000}
HERE=$(cd "$(dirname "$0")" && pwd)
TP=${TAILPROXY:-$HERE/../.venv/bin/tailproxy}
T=$(mktemp -d)
gcc -O2 -o "$T/tcpbench" "$HERE/tcpbench.c"
PEER=$(python3 -c "import json,os;print(json.load(open(os.environ['TESTNET_INFO']))['peers']['peer']['ipv4'])")
"$TP" --hostname perfconn --state-dir "$T/st" "$T/tcpbench" connlat "$PEER" 7 100 >/dev/null
"$TP" --hostname perfconn --state-dir "$T/st" sh -c "sleep 1; $T/tcpbench connlat $PEER 7 $N" &
TPPID=$!
sleep 2
perf record -q -F 999 -p $TPPID -o "$T/perf.data" -- sleep 4 2>/dev/null
wait $TPPID
perf report -i "$T/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
rm -rf "$T"
