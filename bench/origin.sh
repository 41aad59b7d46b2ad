# Sourced by bench/plugins.sh and bench/ab.sh: the benchmark origin, nginx with one worker
# answering every request with a fixed 13-byte body (the same shape as the peer benchmark's).
#
#   start_origin DIR PORT   # writes DIR/origin/nginx.conf, starts nginx, appends its pid to pids
#   ORIGIN_CPU="taskset -c 1" start_origin ...   # runs nginx under that prefix
start_origin() {
  local dir=$1 port=$2
  mkdir -p "$dir/origin"
  cat > "$dir/origin/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $dir/origin/nginx.pid; error_log $dir/origin/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; location / { return 200 "hello world!\n"; } } }
NGINX
  ${ORIGIN_CPU:-} /usr/sbin/nginx -p "$dir/origin/" -c "$dir/origin/nginx.conf" & pids+=($!)
}
