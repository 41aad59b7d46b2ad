# Sourced by bench/plugins.sh and bench/ab.sh for MODE=concurrent: two agents, pinned to the
# same core, loaded at the same time by two wrk, so both see the machine in the same state (this
# host's speed moves from one second to the next). Uses DURATION, CONNS and PEER_CPU.
#
#   pair_round R PID_A URL_A PID_B URL_B [wrk args...]
#     prints "requests_a requests_b cpu_ns_a cpu_ns_b" for one window (fails otherwise); which wrk starts first
#     alternates with R (the first gains ~1 %). Fails when wrk sees an answer that is not
#     2xx/3xx (a signature or token gone stale in a long run would be measured as a cheap 401).

# Runs wrk against $1 (more wrk arguments after it); prints the requests it completed.
wrk_requests() {
  local url=$1
  shift
  $PEER_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" "$@" "$url" |
    awk '/requests in/{ n = $1 } /Non-2xx/{ bad = $NF } END {
      if (bad > 0) { print "wrk got " bad " answers that are not 2xx/3xx: a stale signature or token?" > "/dev/stderr"; exit 1 }
      if (n == "") { print "wrk completed no request" > "/dev/stderr"; exit 1 }
      print n }'
}

# CPU time process $1 has run, in ns.
cpu_ns() { awk '{ print $1 }' "/proc/$1/schedstat"; }

pair_round() {
  local r=$1 pid_a=$2 url_a=$3 pid_b=$4 url_b=$5 out a0 b0 a1 b1 first
  shift 5
  out=$(mktemp -d)
  a0=$(cpu_ns "$pid_a") b0=$(cpu_ns "$pid_b")
  local ok=1
  if [ $((r % 2)) = 1 ]; then
    wrk_requests "$url_a" "$@" > "$out/a" & first=$!
    wrk_requests "$url_b" "$@" > "$out/b" || ok=0
  else
    wrk_requests "$url_b" "$@" > "$out/b" & first=$!
    wrk_requests "$url_a" "$@" > "$out/a" || ok=0
  fi
  wait "$first" || ok=0
  a1=$(cpu_ns "$pid_a") b1=$(cpu_ns "$pid_b")
  [ "$ok" = 1 ] && echo "$(cat "$out/a") $(cat "$out/b") $((a1 - a0)) $((b1 - b0))"
  rm -r "$out"
  [ "$ok" = 1 ]
}
