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
if [ -n "${POLICY:-}" ]; then
  sed -i 's/^spec: { forward:/spec: { policies: [p], forward:/' "$RUN/agent.yaml"
  printf -- '---\nkind: Policy\nname: p\nspec: %s\n' "$POLICY" >> "$RUN/agent.yaml"
fi
"$A" --config "$RUN/agent.yaml" --listen 127.0.0.1:18581 --admin 127.0.0.1:18591 \
  --workers 1 --access-log off 2>"$RUN/a.log" & pids+=($!)
"$B" --config "$RUN/agent.yaml" --listen 127.0.0.1:18582 --admin 127.0.0.1:18592 \
  --workers 1 --access-log off 2>"$RUN/b.log" & pids+=($!)
for port in 18581 18582; do
  for _ in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ] && break
    sleep 0.1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ] ||
    { echo "the agent on port $port does not answer; see $RUN/*.log" >&2; exit 1; }
done

for r in $(seq 1 "$ROUNDS"); do
  line="round $r"
  for side in a b; do
    port=18581; [ "$side" = b ] && port=18582
    wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/" >/dev/null  # warm-up
    rps=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/{print $2}')
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
