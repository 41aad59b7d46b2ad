#!/usr/bin/env bash
# A/B of two agent builds side by side: one nginx origin, both agents proxying to it with no
# policy, wrk against each in alternating rounds. Prints every round and the paired ratio
# B / A (median, min–max). Rounds swing ±5 % on this machine, so use six or more before
# believing a difference of a few percent.
#
#   cp target/release/fleetgate-agent /tmp/agent-old   # before the change
#   cargo build --release -p fleetgate-agent            # after it
#   bench/ab.sh /tmp/agent-old target/release/fleetgate-agent   # ROUNDS=6 DURATION=5 CONNS=50
#   POLICY='{ type: waf, config: { paranoia_level: 1 } }' bench/ab.sh ...   # both with a policy
#   CONFIG=FILE HEADERS=FILE bench/ab.sh ...   # a whole config (its service's address becomes
#                    # this script's origin) and the request headers, one "name: value" a line:
#                    # e.g. bench/plugins.sh's key.yaml and key.headers, for a policy that
#                    # needs a consumer and credentials
#   MODE=concurrent bench/ab.sh ...   # both loaded at the same time (below): ±1 %, not ±5 %
#
# Uses ports 18580-18592 on 127.0.0.1; needs nginx and wrk (../shared/bench/run.sh setup).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bench/ab.sh AGENT_A AGENT_B" >&2; exit 2; }
A=$1 B=$2
ROUNDS=${ROUNDS:-6} DURATION=${DURATION:-5} CONNS=${CONNS:-50}
RUN=$(mktemp -d /tmp/fleetgate-ab.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The origin: nginx, one worker, a fixed 13-byte body.
source "$(dirname "${BASH_SOURCE[0]}")/origin.sh"
start_origin "$RUN" 18580
cat > "$RUN/agent.yaml" <<YAML
kind: Service
name: origin
spec: { endpoints: [{ address: '127.0.0.1:18580' }] }
---
kind: Route
name: all
spec: { forward: { backends: [{ service: origin }] } }
YAML
if [ -n "${CONFIG:-}" ]; then
  sed -E "s/address: '127\.0\.0\.1:[0-9]+'/address: '127.0.0.1:18580'/" "$CONFIG" > "$RUN/agent.yaml"
fi
if [ -n "${POLICY:-}" ]; then
  sed -i 's/^spec: { forward:/spec: { policies: [p], forward:/' "$RUN/agent.yaml"
  printf -- '---\nkind: Policy\nname: p\nspec: %s\n' "$POLICY" >> "$RUN/agent.yaml"
fi
# MODE=concurrent pins both agents to core 0 and nginx and wrk to core 1.
MODE=${MODE:-alternating}
AGENT_CPU="" PEER_CPU=""
[ "$MODE" = concurrent ] && AGENT_CPU="taskset -c 0" PEER_CPU="taskset -c 1"
$AGENT_CPU "$A" --config "$RUN/agent.yaml" --listen 127.0.0.1:18581 --admin 127.0.0.1:18591 \
  --workers 1 --access-log off 2>"$RUN/a.log" & pids+=($!); pid_a=$!
$AGENT_CPU "$B" --config "$RUN/agent.yaml" --listen 127.0.0.1:18582 --admin 127.0.0.1:18592 \
  --workers 1 --access-log off 2>"$RUN/b.log" & pids+=($!); pid_b=$!
headers=()
if [ -n "${HEADERS:-}" ]; then
  while IFS= read -r h || [ -n "$h" ]; do [ -n "$h" ] && headers+=(-H "$h"); done < "$HEADERS"
fi
for port in 18581 18582; do
  for _ in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "${headers[@]}" "http://127.0.0.1:$port/")" = 200 ] && break
    sleep 0.1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "${headers[@]}" "http://127.0.0.1:$port/")" = 200 ] ||
    { echo "the agent on port $port does not answer 200; see $RUN/*.log" >&2; exit 1; }
done

# MODE=concurrent: the two agents share core 0 and are loaded at the same time by two wrk, so
# both see the machine in the same state (this host's speed moves from one second to the
# next); each one's CPU time per request comes from /proc/PID/schedstat over the same window.
# The wrk started first alternates per round. Prints B's cost per request over A's.
if [ "$MODE" = concurrent ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/concurrent.sh"
  pair() {
    pair_round "$1" "$pid_a" http://127.0.0.1:18581/ "$pid_b" http://127.0.0.1:18582/ "${headers[@]}"
  }
  pair 1 >/dev/null  # warm-up, together
  for r in $(seq 1 "$ROUNDS"); do
    line=$(pair "$r")
    read -r na nb ca cb <<<"$line"
    echo "$na $nb $ca $cb" >> "$RUN/concurrent"
    awk -v r="$r" -v na="$na" -v nb="$nb" -v ca="$ca" -v cb="$cb" 'BEGIN {
      printf "round %d  a=%.2f µs/request  b=%.2f µs/request\n", r, ca / na / 1e3, cb / nb / 1e3 }'
  done
  python3 - "$RUN/concurrent" <<'PY'
import statistics, sys
ratios = []
for line in open(sys.argv[1]):
    na, nb, ca, cb = map(int, line.split())
    ratios.append((cb / nb) / (ca / na))
print(f"B/A CPU per request: median {statistics.median(ratios):.3f} "
      f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} rounds")
PY
  exit 0
fi

for r in $(seq 1 "$ROUNDS"); do
  line="round $r"
  for side in a b; do
    port=18581; [ "$side" = b ] && port=18582
    wrk -t1 -c"$CONNS" -d1s "${headers[@]}" "http://127.0.0.1:$port/" >/dev/null  # warm-up
    rps=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "${headers[@]}" "http://127.0.0.1:$port/" | awk '/Requests\/sec/{print $2}')
    echo "$side $rps" >> "$RUN/results"
    line="$line  $side=$rps"
  done
  echo "$line"
done
python3 - "$RUN/results" <<'PY'
import statistics, sys
rows = {"a": [], "b": []}
for line in open(sys.argv[1]):
    side, rps = line.split()
    rows[side].append(float(rps))
ratios = [b / a for a, b in zip(rows["a"], rows["b"])]
print(f"B/A paired ratio: median {statistics.median(ratios):.3f} "
      f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} rounds")
PY
