#!/usr/bin/env bash
# Instructions the agent spends per request with a given config, counted by callgrind: the
# agent (--workers 1) serves N1 and then N2 keep-alive `GET /` from one client, and the
# difference of the two totals divided by N2 - N1 is the cost of one request (start-up and
# config compilation cancel out). Deterministic where wall-clock timing on a shared machine is
# not; the kernel's share (sockets) is not counted.
#
#   bench/instructions.sh CONFIG.yaml [N1 N2]     # default 200 1200; needs nginx and valgrind
#   HEADERS=hmac.headers bench/instructions.sh ...  # extra request headers, one "name: value"
#                                                   # per line (plugins.sh writes these too)
#
# CONFIG forwards `/` to 127.0.0.1:18180, where this script starts the benchmark origin
# (bench/plugins.sh writes such configs, e.g. off.yaml and waf.yaml, into its run directory).
# Uses ports 18180 and 18195-18196 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONFIG=${1:?usage: bench/instructions.sh CONFIG.yaml [N1 N2]}
N1=${2:-200} N2=${3:-1200}
AGENT=${AGENT:-target/release/fleetgate-agent}
RUN=$(mktemp -d /tmp/fleetgate-instructions.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
source bench/origin.sh
start_origin "$RUN" 18180

# One callgrind run serving $1 requests; prints the instruction total.
count() {
  local n=$1 agent
  valgrind --tool=callgrind --callgrind-out-file="$RUN/cg.$n" "$AGENT" --config "$CONFIG" \
    --listen 127.0.0.1:18195 --admin 127.0.0.1:18196 --workers 1 --access-log off \
    2>"$RUN/agent.$n.log" &
  agent=$!
  for _ in $(seq 1 120); do
    curl -s -o /dev/null http://127.0.0.1:18195/ && break
    sleep 0.5
  done
  python3 - "$n" "${HEADERS:-}" <<'PY'
import http.client, sys
headers = {"Host": "127.0.0.1:18195"}
if sys.argv[2]:
    for line in open(sys.argv[2]):
        if line.strip():
            name, value = line.split(":", 1)
            headers[name.strip()] = value.strip()
conn = http.client.HTTPConnection("127.0.0.1", 18195)
for _ in range(int(sys.argv[1]) - 1):  # the readiness probe above was one
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"the agent answered {response.status}")
PY
  kill -INT "$agent"
  wait "$agent" || true
  awk '/^summary:/{print $2}' "$RUN/cg.$n"
}

echo "counting $N1 and $N2 requests under callgrind (a minute or two)..." >&2
a=$(count "$N1")
b=$(count "$N2")
echo "$CONFIG: $(( (b - a) / (N2 - N1) )) instructions per request (callgrind totals $a, $b)"
