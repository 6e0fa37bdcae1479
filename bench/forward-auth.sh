#!/usr/bin/env bash
# Forward-auth cost: requests/s on a route protected by forward-auth through the chat's verify
# endpoint, against the same route without auth, in one interleaved run (edge, one worker,
# keep-alive, wrk -t1 -c64, a 1 KiB nginx upstream). The client carries a real session from
# a one-time sign-in link. Three routes, same upstream:
#   /open/    no auth
#   /authed/  auth = "forward" (verdicts cached, the default 5 s)
#   /nocache/ auth = "forward", auth_cache = "0s" (every request asks the chat)
#
#   bench/forward-auth.sh            # 5 rounds of 10 s
#   ROUNDS=3 DURATION=5 bench/forward-auth.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-10}
command -v wrk >/dev/null || { echo "wrk is needed (bash bench/harness/install.sh)" >&2; exit 1; }
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" >&2
EDGE=$ROOT/target/release/edge
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$RUN"' EXIT
UP=19310; HTTP=19311; CHAT=19312
mkdir -p "$RUN/tmp"
cat > "$RUN/up.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/up.pid; error_log $RUN/err.log error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; client_body_temp_path $RUN/tmp; proxy_temp_path $RUN/tmp;
  fastcgi_temp_path $RUN/tmp; uwsgi_temp_path $RUN/tmp; scgi_temp_path $RUN/tmp;
  server { listen 127.0.0.1:$UP; location / { return 200 "$(head -c 1024 /dev/zero | tr '\0' x)"; } } }
CONF
cat > "$RUN/edge.toml" <<CONF
domain = "example.test"
state_dir = "$RUN/state"
[listen]
https = ""
http = "127.0.0.1:$HTTP"
admin = ""
http_redirect = false
workers = 1
[log]
access = false
[[projects]]
name = "demo"
  [[projects.routes]]
  mount = "open"
  upstream = "http://127.0.0.1:$UP"
  [[projects.routes]]
  mount = "authed"
  upstream = "http://127.0.0.1:$UP"
  auth = "forward"
  [[projects.routes]]
  mount = "nocache"
  upstream = "http://127.0.0.1:$UP"
  auth = "forward"
  auth_cache = "0s"
  [[projects.routes]]
  mount = "chat"
  upstream = "chat"
[chat]
listen = "127.0.0.1:$CHAT"
login = "token"
CONF
/usr/sbin/nginx -c "$RUN/up.conf" -p "$RUN" &
"$EDGE" up --config "$RUN/edge.toml" > "$RUN/edge.out" 2> "$RUN/edge.err" &
EDGE_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$HTTP/" && break; sleep 0.1; done
LINK=$("$EDGE" chat login-url --config "$RUN/edge.toml")
LINK=${LINK/demo.example.test/127.0.0.1}
COOKIE=$(curl -s -o /dev/null -D - -H 'Host: demo.example.test' "http://127.0.0.1:$HTTP/chat/login/token?${LINK#*\?}" \
  | sed -n 's/^set-cookie: \([^;]*\).*/\1/ip' | tr -d '\r')
[[ $COOKIE == __Host-edge-chat=* ]] || { echo "no session cookie: $COOKIE" >&2; cat "$RUN/edge.err" >&2; exit 1; }
for m in open authed nocache; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: demo.example.test' -H "Cookie: $COOKIE" "http://127.0.0.1:$HTTP/$m/x")
  [[ $code == 200 ]] || { echo "/$m/ answered $code" >&2; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: demo.example.test' "http://127.0.0.1:$HTTP/authed/x")
[[ $code == 401 ]] || { echo "/authed/ without a session answered $code" >&2; exit 1; }

# CPU time (user + sys, clock ticks) of edge, which runs the chat in-process too.
ticks() { local s; s=$(cat "/proc/$EDGE_PID/stat"); s=${s##*) }; read -r -a f <<<"$s"; echo $((f[11] + f[12])); }
HZ=$(getconf CLK_TCK)
# Prints "req/s cpu-us-per-request" for one run.
run() {
  local c0 c1 out n rps
  c0=$(ticks)
  out=$(wrk -t1 -c64 -d"${DURATION}s" -H 'Host: demo.example.test' -H "Cookie: $COOKIE" "http://127.0.0.1:$HTTP/$1/x")
  c1=$(ticks)
  if grep -q Non-2xx <<<"$out"; then echo "/$1/: non-2xx answers" >&2; exit 1; fi
  n=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  echo "$rps $(echo "($c1 - $c0) * 1000000 / $HZ / $n" | bc -l)"
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# Warm-up: every route once (connections, caches, the allocator).
for m in open authed nocache; do DURATION=2 run $m >/dev/null; done
declare -A RPS CPU
for i in $(seq "$ROUNDS"); do
  for m in open authed nocache; do
    read -r RPS[$m,$i] CPU[$m,$i] < <(run $m)
  done
  printf 'round %s: open %.0f/s %.1fus | authed %.0f/s %.1fus (%.2fx) | nocache %.0f/s %.1fus (%.2fx)\n' "$i" \
    "${RPS[open,$i]}" "${CPU[open,$i]}" "${RPS[authed,$i]}" "${CPU[authed,$i]}" "$(echo "${RPS[authed,$i]} / ${RPS[open,$i]}" | bc -l)" \
    "${RPS[nocache,$i]}" "${CPU[nocache,$i]}" "$(echo "${RPS[nocache,$i]} / ${RPS[open,$i]}" | bc -l)"
done
echo
for m in authed nocache; do
  r=$(for i in $(seq "$ROUNDS"); do echo "${RPS[$m,$i]} / ${RPS[open,$i]}" | bc -l; done | median)
  c=$(for i in $(seq "$ROUNDS"); do echo "${CPU[$m,$i]} / ${CPU[open,$i]}" | bc -l; done | median)
  printf 'median over %s rounds, /%s/ vs /open/: req/s %.2fx, edge CPU per request %.2fx\n' "$ROUNDS" "$m" "$r" "$c"
done
