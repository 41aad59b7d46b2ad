#!/usr/bin/env bash
# Starts the Fleetgate agent for ../shared/bench/run.sh (its OURS_CMD):
#   OURS_CONF_TMPL=bench/ours.yaml.tmpl \
#   OURS_CMD="bash $PWD/bench/ours.sh @RUN@ $PWD/target/release/fleetgate-agent" \
#   ../shared/bench/run.sh all
# Our model carries certificates inline, so the PEM files run.sh generated are embedded into a
# Certificate document here. One worker thread, no access log, like every other contender.
set -euo pipefail
run=$1 agent=$2 port=${3:-18087} tls_port=${4:-18447} admin=${5:-19987}
conf="$run/conf/ours-full.yaml"
{
  cat "$run/conf/ours.yaml"
  printf -- '---\nkind: Certificate\nname: bench-tls\nspec:\n  cert_pem: |\n'
  sed 's/^/    /' "$run/tls/cert.pem"
  printf '  key_pem: |\n'
  sed 's/^/    /' "$run/tls/key.pem"
} > "$conf"
exec "$agent" --config "$conf" --listen "127.0.0.1:$port" --listen-tls "127.0.0.1:$tls_port" \
  --admin "127.0.0.1:$admin" --workers 1 --access-log off
