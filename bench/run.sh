#!/usr/bin/env bash
# Benchmarks edge side by side with nginx, HAProxy (and, if asked, Caddy, Traefik, Envoy) using
# the peer harness (bench/harness/run.sh): GET /forge/<rest> proxied to a fixed 1 KiB
# upstream, prefix stripped, one worker each, interleaved rounds, over HTTP and HTTPS, plus a
# WebSocket echo. Loopback only; every run is bounded. Results: $OUT (printed at the end).
#
#   bench/run.sh                       # edge vs nginx and HAProxy, 5 rounds of 10 s
#   TARGETS="direct nginx haproxy caddy traefik envoy" bench/run.sh
#   ACCESS_LOG=1 bench/run.sh          # everyone logs each request to a file (nginx: its default
#                                      # format, unbuffered; edge: its default access log, to a file)
#   EDGE_DEFAULTS=1 bench/run.sh       # edge as shipped: a worker per core and HSTS, vs the peers' job
#
# Needs the harness' peers: `bash bench/harness/install.sh` once (nginx, haproxy, wrk, ...).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
HARNESS=${HARNESS:-$ROOT/bench/harness/run.sh}
[[ -x $HARNESS || -f $HARNESS ]] || { echo "harness not found at $HARNESS (set HARNESS=)" >&2; exit 1; }

# EDGE_BIN=/path/to/edge compares another build (e.g. the one before a change); else this tree's.
if [[ -z ${EDGE_BIN:-} ]]; then
  cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" >&2
  EDGE_BIN=$ROOT/target/release/edge
fi

export TARGETS=${TARGETS:-"direct nginx haproxy"}
export EXTRA_NAME=edge
export EXTRA_PORT=${EXTRA_PORT:-9106}
export EXTRA_TLS_PORT=${EXTRA_TLS_PORT:-9206}
export EXTRA_HOST=demo.example.test
export EDGE_BIN
# The harness exports UP_PORT, WS_PORT, RUN and WORKERS to this command. edge gets the same
# job as nginx's config in the harness: no access log (ACCESS_LOG=1: a log file, as nginx's), no
# HSTS header, one worker (EDGE_DEFAULTS=1: edge's own defaults for both).
export EDGE_DEFAULTS=${EDGE_DEFAULTS:-0}
# EDGE_ACCESS_FILE=0: edge's access log to stderr (the harness keeps it in a file), for builds
# that have no `access_file`.
export EDGE_ACCESS_FILE=${EDGE_ACCESS_FILE:-1}
export EXTRA_CMD='if [[ $EDGE_DEFAULTS == 1 ]]; then WORKERS_LINE=""; HSTS_LINE=""; else WORKERS_LINE="workers = $WORKERS"; HSTS_LINE="hsts = false"; fi
if [[ $ACCESS_LOG == 1 && $EDGE_ACCESS_FILE == 1 ]]; then LOG_LINES="access = true
access_file = \"$RUN/edge-access.log\""; elif [[ $ACCESS_LOG == 1 ]]; then LOG_LINES="access = true"; else LOG_LINES="access = false"; fi
cat > "$RUN/edge.toml" <<CONF
domain = "example.test"
state_dir = "$RUN/edge-state"
fallback_project = "demo"
[listen]
https = "127.0.0.1:$EXTRA_TLS_PORT"
http = "127.0.0.1:$EXTRA_PORT"
admin = ""
http_redirect = false
$HSTS_LINE
$WORKERS_LINE
[log]
$LOG_LINES
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://127.0.0.1:$UP_PORT"
  [[projects.routes]]
  mount = "ws"
  upstream = "http://127.0.0.1:$WS_PORT"
  root_paths = ["/wsecho"]
CONF
exec "$EDGE_BIN" up --config "$RUN/edge.toml"'
exec bash "$HARNESS"
