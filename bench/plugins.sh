#!/usr/bin/env bash
# The cost of each policy on the request path: one agent per variant (no policy, jwt-auth,
# key-auth, hmac-auth, waf; and "ipr" when named in VARIANTS: an ip-restriction allowing
# loopback, the cost of running any chain at all), all forwarding to the same nginx origin,
# measured with wrk in alternating rounds in one run. Prints req/s medians, each variant's
# ratio to "off", and for the auth variants the ratio to "off" receiving the same request
# headers (the policy's own cost, without the cost of carrying a token or signature through the
# proxy); then the same as the agent's CPU time per request (from /proc), which noise from other
# guests moves less.
#
#   bench/plugins.sh                 # REPS=5 DURATION=5 CONNS=50; needs nginx and wrk
#                                    # (../shared/bench/run.sh setup installs both)
#   PIN=1 VARIANTS="off waf" bench/plugins.sh   # agents on core 0, nginx and wrk on core 1
#   MODE=concurrent bench/plugins.sh   # each variant measured at the same time as "off" (below)
#   MODE=instructions DURATION=8 bench/plugins.sh   # instructions per request, by callgrind
#   REQUEST=api MODE=concurrent bench/plugins.sh   # an API client's request instead of wrk's
#                                    # bare GET: its usual headers, and 2 KB of JSON back
#   cargo bench -p fleetgate-agent-policy --bench plugins   # each policy's own cost in-process
# Uses ports 18180-18199 on 127.0.0.1. Every variant runs with --workers 1 --access-log off.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
AGENT=${AGENT:-target/release/fleetgate-agent}
REPS=${REPS:-5} DURATION=${DURATION:-5} CONNS=${CONNS:-50}
RUN=$(mktemp -d /tmp/fleetgate-plugin-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Where each process runs: PIN=1 gives every agent core 0 and nginx and wrk core 1 (the
# agent's core is its own, as on a gateway host); by default the scheduler places them all.
# docs/benchmarks.md (session 14) has both for the WAF. MODE=concurrent pins that way too.
MODE=${MODE:-alternating}
if [ "${PIN:-0}" = 1 ] || [ "$MODE" = concurrent ]; then
  AGENT_CPU="taskset -c 0" PEER_CPU="taskset -c 1"
else
  AGENT_CPU="" PEER_CPU=""
fi

# A headers file (one "name: value" a line) as wrk and curl arguments, in the array `args`.
header_args() {
  local h
  args=()
  while IFS= read -r h || [ -n "$h" ]; do [ -n "$h" ] && args+=(-H "$h"); done < "$1"
}

# The origin: nginx, one worker, a fixed 13-byte body (REQUEST=api: 2 KB of JSON).
REQUEST=${REQUEST:-bare}
case $REQUEST in bare | api) ;; *) echo "REQUEST is bare or api, not $REQUEST" >&2; exit 1 ;; esac
source "$(dirname "${BASH_SOURCE[0]}")/origin.sh"
ORIGIN_JSON=$([ "$REQUEST" = api ] && echo 1 || echo 0) ORIGIN_CPU=$PEER_CPU start_origin "$RUN" 18180

# Configs and the headers each variant's client sends, written by python (stdlib only).
python3 - "$RUN" "$REQUEST" <<'PY'
import base64, hashlib, hmac, json, sys, time
run = sys.argv[1]
# REQUEST=api: what an API client sends besides its credential, on every variant's request.
client = ["user-agent: acme-billing/4.2.1 (python-requests/2.32)", "accept: application/json",
          "accept-encoding: gzip, deflate, br",
          "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] if sys.argv[2] == "api" else []
def b64url(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret = "bench-secret-0123456789abcdef0123456789"
now = int(time.time())
base = """kind: Service
name: origin
spec: { endpoints: [{ address: '127.0.0.1:18180' }] }
---
kind: Consumer
name: bench
spec:
  credentials:
    keys: [bench-key-0123456789abcdef]
    jwt: { subject: bench }
    hmac: [{ key_id: k-bench, secret: %s }]
---
kind: Route
name: all
spec:
  forward: { backends: [{ service: origin }] }
""" % secret
policies = {
    "off": ("", []),
    "jwt": ("type: jwt-auth\n  config: { algorithms: [HS256], keys: [{ algorithm: HS256, secret: %s }], consumer_claim: sub }" % secret, []),
    "key": ("type: key-auth\n  config: {}", ["x-api-key: bench-key-0123456789abcdef"]),
    "hmac": ("type: hmac-auth\n  config: { require_nonce: false }", []),
    "waf": ("type: waf\n  config: { paranoia_level: 1 }", []),
    # The fixed cost of having any policy: a chain whose one plugin compares the client address.
    "ipr": ("type: ip-restriction\n  config: { allow: ['127.0.0.0/8'] }", []),
}
header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64url(json.dumps({"sub": "bench", "iat": now, "exp": now + 7200}).encode())
sig = b64url(hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest())
policies["jwt"][1].append(f"authorization: Bearer {header}.{claims}.{sig}")
# hmac-auth canonical request (docs/policies.md), GET / with host, date and body digest signed.
digest = hashlib.sha256(b"").hexdigest()
for port in [18181 + list(policies).index("hmac")]:
    host = f"127.0.0.1:{port}"
    signed = "host;x-fleetgate-date;x-fleetgate-content-sha256"
    canonical = "\n".join(["FG-HMAC-SHA256", "k-bench", "", "GET", "/", "", f"host:{host}",
                           f"x-fleetgate-date:{now}", f"x-fleetgate-content-sha256:{digest}"])
    signature = base64.b64encode(hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).digest()).decode()
    policies["hmac"][1].extend([f"x-fleetgate-date: {now}", f"x-fleetgate-content-sha256: {digest}",
        f'authorization: FG-HMAC-SHA256 keyId="k-bench", signedHeaders="{signed}", signature="{signature}"'])
for i, (name, (policy, headers)) in enumerate(policies.items()):
    text = base
    if policy:
        text = text.replace("  forward:", "  policies: [p]\n  forward:") + "---\nkind: Policy\nname: p\nspec:\n  " + policy + "\n"
    open(f"{run}/{name}.yaml", "w").write(text)
    open(f"{run}/{name}.headers", "w").write("\n".join(client + headers))
    open(f"{run}/{name}.port", "w").write(str(18181 + i))
PY

variants=${VARIANTS:-off jwt key hmac waf}  # e.g. VARIANTS="off hmac" REPS=10 for one policy
if [ "$MODE" = concurrent ]; then
  # A second policy-less agent: "off" measured against itself shows the method's own error.
  cp "$RUN/off.yaml" "$RUN/off2.yaml"; cp "$RUN/off.headers" "$RUN/off2.headers"
  echo 18188 > "$RUN/off2.port"
  variants="off off2 ${variants//off/}"
fi
# MODE=instructions: what each variant's agent executes per request, counted by callgrind
# instead of timed, so the host's speed does not enter (needs valgrind). One agent at a time runs
# under callgrind, is warmed by wrk, has its counters zeroed, serves one wrk window and dumps
# them; the total over the requests wrk completed is the figure. An auth variant is compared with
# the policy-less agent sent its headers. Counts move by a few hundred with how many requests a
# wake-up finds; the software SHA-256 valgrind runs (its CPU has no SHA instructions) is left
# out of hmac-auth's.
if [ "$MODE" = instructions ]; then
  command -v valgrind >/dev/null || { echo "MODE=instructions needs valgrind" >&2; exit 1; }
  # Instructions per request of variant $1's agent sent variant $2's headers.
  count() {
    local port out pid args=() code n total
    port=$(cat "$RUN/$1.port") out="$RUN/callgrind.$1.$2"
    header_args "$RUN/$2.headers"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$AGENT" --config "$RUN/$1.yaml" \
      --listen "127.0.0.1:$port" --admin "127.0.0.1:$((port + 10))" --workers 1 \
      --access-log off 2>"$RUN/$1.callgrind.log" & pid=$!
    for _ in $(seq 1 60); do
      code=$(curl -s -o /dev/null -w '%{http_code}' "${args[@]}" "http://127.0.0.1:$port/" || true)
      [ "$code" = 200 ] && break
      sleep 1
    done
    [ "$code" = 200 ] || { echo "variant $1 answers $code; see $RUN/$1.callgrind.log" >&2; exit 1; }
    wrk -t1 -c4 -d3s "${args[@]}" "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    n=$(wrk -t1 -c4 -d"${DURATION}s" "${args[@]}" "http://127.0.0.1:$port/" | awk '/requests in/{print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
    # valgrind's CPU has no SHA instructions, so RustCrypto's portable SHA-256 runs here where
    # the agent uses SHA-NI: its compression is left out (hmac-auth's ~17 k per request).
    soft=$(callgrind_annotate --inclusive=yes "$out.1" 2>/dev/null |
      awk '/sha2::sha256::soft::compress \[/{gsub(",", "", $1); print $1; exit}')
    echo $(((total - ${soft:-0}) / n))
  }
  echo "| variant | instructions per request | \"off\" sent its headers | difference |"
  echo "|---|---|---|---|"
  off=$(count off off)
  echo "| off | $off | | |"
  for v in $variants; do
    [ "$v" = off ] && continue
    own=$(count "$v" "$v") base=$off
    cmp -s "$RUN/$v.headers" "$RUN/off.headers" || base=$(count off "$v")
    echo "| $v | $own | $base | $((own - base)) |"
  done
  exit 0
fi

for v in $variants; do
  port=$(cat "$RUN/$v.port")
  $AGENT_CPU "$AGENT" --config "$RUN/$v.yaml" --listen "127.0.0.1:$port" \
    --admin "127.0.0.1:$((port + 10))" --workers 1 --access-log off 2>"$RUN/$v.log" & pids+=($!)
  echo $! > "$RUN/$v.pid"
done
sleep 2
for v in $variants; do
  port=$(cat "$RUN/$v.port")
  header_args "$RUN/$v.headers"
  code=$(curl -s -o /dev/null -w '%{http_code}' "${args[@]}" "http://127.0.0.1:$port/")
  [ "$code" = 200 ] || { echo "variant $v answers $code; see $RUN/$v.log" >&2; exit 1; }
done

# One measurement: wrk against variant $1's agent with the headers of variant $2's client,
# recorded under the name $3.
measure() {
  local port pid args=() out rps requests ticks0 ticks1 cpu non2xx
  port=$(cat "$RUN/$1.port") pid=$(cat "$RUN/$1.pid")
  header_args "$RUN/$2.headers"
  $PEER_CPU wrk -t1 -c"$CONNS" -d1s "${args[@]}" "http://127.0.0.1:$port/" >/dev/null  # warm-up
  ticks0=$(agent_ticks "$pid")
  out=$($PEER_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" "${args[@]}" "http://127.0.0.1:$port/")
  ticks1=$(agent_ticks "$pid")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  requests=$(awk '/requests in/{print $1}' <<<"$out")
  # The agent's CPU time (user + system) per request served, in µs.
  cpu=$(awk -v t=$((ticks1 - ticks0)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  non2xx=$(wrk -t1 -c1 -d1s "${args[@]}" "http://127.0.0.1:$port/" | awk '/Non-2xx/{print $4}')
  echo "round $r $3 rps=$rps cpu_us=$cpu non2xx=${non2xx:-0}"
  echo "$3 $rps $cpu" >> "$RUN/results"
}

# Clock ticks of CPU (user + system) process $1 has used.
agent_ticks() {
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# MODE=concurrent: the host this runs on changes speed from one second to the next (other
# guests), which moves alternating rounds by ±10 % or more. Here each variant's agent and the
# policy-less one share core 0 and are loaded at the same time by two wrk (core 1), both sent
# the variant's request: both see the same machine, and the scheduler gives each half the core.
# Each agent's CPU time per request (from /proc/PID/schedstat, ns) is taken over the same
# window; "off" over the variant is the throughput ratio of an agent whose core is the limit.
# The wrk started first alternates per round (it gains ~1 %). off2 is a second policy-less
# agent: its ratio to "off" is the method's error.
if [ "$MODE" = concurrent ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/concurrent.sh"
  # One window of "off" and variant $2, both sent $2's request; round $1.
  pair() {
    local args=()
    header_args "$RUN/$2.headers"
    pair_round "$1" "$(cat "$RUN/off.pid")" "http://127.0.0.1:$(cat "$RUN/off.port")/" \
      "$(cat "$RUN/$2.pid")" "http://127.0.0.1:$(cat "$RUN/$2.port")/" "${args[@]}"
  }
  for v in $variants; do
    [ "$v" = off ] || pair 1 "$v" >/dev/null  # warm-up, together
  done
  for r in $(seq 1 "$REPS"); do
    for v in $variants; do
      [ "$v" = off ] && continue
      line=$(pair "$r" "$v")
      read -r na nb ca cb <<<"$line"
      awk -v r="$r" -v v="$v" -v ca="$ca" -v cb="$cb" -v na="$na" -v nb="$nb" 'BEGIN {
        printf "round %d %s: off %.2f µs/request, %s %.2f µs/request, CPU ratio %.3f, req ratio %.3f\n",
          r, v, ca / na / 1e3, v, cb / nb / 1e3, (ca / na) / (cb / nb), nb / na }'
      echo "$v $na $nb $ca $cb" >> "$RUN/concurrent"
    done
  done
  python3 - "$RUN/concurrent" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, na, nb, ca, cb = line.split()
    rows.setdefault(v, []).append((int(na), int(nb), int(ca), int(cb)))
print("| variant | its agent, µs CPU/request (median) | \"off\" beside it | CPU ratio off ÷ variant: median (min–max) | requests ratio: median |")
print("|---|---|---|---|---|")
for v, rs in rows.items():
    cpu = [(ca / na) / (cb / nb) for na, nb, ca, cb in rs]
    req = [nb / na for na, nb, _, _ in rs]
    own = statistics.median(cb / nb / 1e3 for na, nb, ca, cb in rs)
    off = statistics.median(ca / na / 1e3 for na, nb, ca, cb in rs)
    print(f"| {v} | {own:.2f} | {off:.2f} | {statistics.median(cpu):.3f} ({min(cpu):.3f}–{max(cpu):.3f}) | {statistics.median(req):.3f} |")
PY
  exit 0
fi

# Each auth variant's client sends headers (a token, a signature) that cost something to parse
# and forward with or without the policy: "off+V" is the policy-less agent receiving V's
# headers, the baseline that isolates what the policy itself costs.
for r in $(seq 1 "$REPS"); do
  for v in $variants; do
    measure "$v" "$v" "$v"
    if [ -s "$RUN/$v.headers" ]; then measure off "$v" "off+$v"; fi
  done
done
python3 - "$RUN/results" <<'PY'
import statistics, sys
rows, cpu, order = {}, {}, []
for line in open(sys.argv[1]):
    v, rps, us = line.split()
    rows.setdefault(v, []).append(float(rps))
    cpu.setdefault(v, []).append(float(us))
    if v not in order: order.append(v)
# Each round measures every variant back to back: ratios are paired within a round, which
# cancels most of what other processes on the machine do between rounds.
def paired(xs, base):
    ratios = [x / b for x, b in zip(xs, rows[base])]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
print("| variant | req/s median | min–max | paired ratio to off: median (min–max) | to off with the same headers |")
print("|---|---|---|---|---|")
for v in order:
    xs = rows[v]
    same = paired(xs, f"off+{v}") if f"off+{v}" in rows else "–"
    print(f"| {v} | {statistics.median(xs):,.0f} | {min(xs):,.0f}–{max(xs):,.0f} | "
          f"{paired(xs, 'off')} | {same} |")
# CPU time per request is steadier than req/s on a shared machine (time the VM is not given
# counts in neither): off's CPU over a variant's is the throughput ratio an agent whose core
# is the limit shows.
print()
print("| variant | agent CPU µs/request: median (min–max) | CPU ratio off ÷ variant | to off with the same headers |")
print("|---|---|---|---|")
med = {v: statistics.median(us) for v, us in cpu.items()}
for v in order:
    us = cpu[v]
    same = f"{med[f'off+{v}'] / med[v]:.3f}" if f"off+{v}" in med else "–"
    print(f"| {v} | {med[v]:.2f} ({min(us):.2f}–{max(us):.2f}) | {med['off'] / med[v]:.3f} | {same} |")
PY
