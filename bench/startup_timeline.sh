#!/bin/sh
# Where tailproxy's start-up goes, with saved state: wall clock just before `tailproxy` starts and
# in the program, next to the node's own log (tsnet start, control, Running). On the local tailnet:
#
#   python -m tailproxy.testnet -- sh bench/startup_timeline.sh
#
# The first run saves the node state (not shown); the second is the one timed.
TP=${TAILPROXY:-$(dirname "$0")/../.venv/bin/tailproxy}
ST=$(mktemp -d)
"$TP" --hostname startup --state-dir "$ST" true
echo "start   $(date +%T.%N)"
"$TP" --hostname startup --state-dir "$ST" sh -c 'echo "program $(date +%T.%N)"'
grep -a -E "tsnet starting|control server key|RegisterReq: got|new network map|Starting -> Running|localapi: \[" \
    "$ST/node.log" | tail -6
rm -rf "$ST"
