#!/usr/bin/env bash
# The main job: installs what is missing, builds weft, and brings up a 3-node lab (host-gw,
# 2 pods per node, real etcd and real agents in network namespaces). Then every pod pings every
# pod on the other nodes, and TCP receivers print the source address they see: the sender's
# own pod IP, no NAT. The lab stays up for you to explore; remove it with
#   ./target/release/weftctl lab down --id demo
# Usage (as root): ./deploy/demo.sh [--nodes N] [--pods P]
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=3 PODS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --pods) PODS=$2; shift 2 ;;
    *) echo "usage: $0 [--nodes N] [--pods P]" >&2; exit 2 ;;
  esac
done
./deploy/install-deps.sh
echo "== building (release)"
cargo build --release --locked --bins
W=./target/release/weftctl
ID=demo

$W lab down --id $ID >/dev/null 2>&1 || true
echo "== weftctl lab up --id $ID --nodes $NODES --pods $PODS"
start=$(date +%s%N)
$W lab up --id $ID --nodes "$NODES" --pods "$PODS"
echo "lab up took $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo
$W lab status --id $ID
echo
echo "== weftctl nodes (run inside node n1)"
$W lab exec --id $ID n1 -- weftctl nodes
echo

# node/pod and IP of every pod, from the lab's JSON status
mapfile -t PODLIST < <($W lab status --id $ID --json | jq -r '.nodes[] | .node as $n | .agent.pods[] | "\($n)/\(.name) \(.ip)"')

echo "== cross-host pings (every pod to every pod on another node)"
ok=0 fail=0
for a in "${PODLIST[@]}"; do
  src=${a%% *}
  for b in "${PODLIST[@]}"; do
    dst=${b%% *}; ip=${b##* }
    [ "${src%%/*}" = "${dst%%/*}" ] && continue
    if $W lab exec --id $ID "$src" -- ping -n -q -c1 -W1 "$ip" >/dev/null 2>&1; then
      printf '  %-8s -> %-8s %-12s ok\n' "$src" "$dst" "$ip"; ok=$((ok+1))
    else
      printf '  %-8s -> %-8s %-12s FAILED\n' "$src" "$dst" "$ip"; fail=$((fail+1))
    fi
  done
done
echo "  $ok ok, $fail failed"
echo

echo "== source IPs seen by TCP receivers (no NAT between pods)"
first=${PODLIST[0]}; last=${PODLIST[${#PODLIST[@]}-1]}
for pair in "$first|$last" "$last|$first"; do
  c=${pair%%|*}; s=${pair##*|}
  cpod=${c%% *}; cip=${c##* }; spod=${s%% *}; sip=${s##* }
  log=$(mktemp)
  $W lab exec --id $ID "$spod" -- timeout 5 nc -n -v -l -s "$sip" -p 7777 >"$log" 2>&1 &
  srv=$!
  sleep 0.5
  echo "hello from $cpod" | $W lab exec --id $ID "$cpod" -- nc -n -N -w 3 "$sip" 7777 >/dev/null 2>&1 || true
  wait $srv || true
  seen=$(awk '/Connection received on/ {print $4; exit}' "$log")
  rm -f "$log"
  verdict='(the pod IP: no NAT)'
  [ "$seen" = "$cip" ] || { verdict='(UNEXPECTED)'; fail=$((fail+1)); }
  printf '  %s (%s) -> %s (%s): receiver saw source %s %s\n' "$cpod" "$cip" "$spod" "$sip" "${seen:-?}" "$verdict"
done
echo
echo "The lab is still up. Try:"
echo "  $W lab exec --id $ID n1/p1 -- ping -c3 ${PODLIST[${#PODLIST[@]}-1]##* }"
echo "  $W lab exec --id $ID n2 -- ip route"
echo "  $W lab down --id $ID"
[ "$fail" = 0 ]
