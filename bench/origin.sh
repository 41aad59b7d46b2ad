# Sourced by bench/plugins.sh and bench/ab.sh: the benchmark origin, nginx with one worker
# answering every request with a fixed 13-byte body (the same shape as the peer benchmark's).
#
#   start_origin DIR PORT   # writes DIR/origin/nginx.conf, starts nginx, appends its pid to pids
#   ORIGIN_CPU="taskset -c 1" start_origin ...   # runs nginx under that prefix
#   ORIGIN_JSON=1 start_origin ...   # answers with 2 KB of JSON instead (an API's answer)
start_origin() {
  local dir=$1 port=$2 answer='return 200 "hello world!\n";'
  mkdir -p "$dir/origin"
  if [ "${ORIGIN_JSON:-0}" = 1 ]; then
    # Twenty records of an order list, 2 KB, as an API answers a listing.
    answer="default_type application/json; return 200 '$(python3 -c '
import json
items = [{"id": f"ord_{i:06d}", "status": "shipped", "total": {"amount": 1999 + i, "currency": "EUR"},
          "customer": f"cus_{i * 7:06d}"} for i in range(20)]
print(json.dumps({"items": items, "next": "ord_000020"}, separators=(",", ":")))')';"
  fi
  cat > "$dir/origin/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $dir/origin/nginx.pid; error_log $dir/origin/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; location / { $answer } } }
NGINX
  ${ORIGIN_CPU:-} /usr/sbin/nginx -p "$dir/origin/" -c "$dir/origin/nginx.conf" & pids+=($!)
}
