#!/usr/bin/env bash
# edge register's tunnel side by side with rathole, across two network namespaces made here:
# the edge (and rathole's server) in this one, the project host (nginx, `edge register`,
# rathole's client) in its own, joined by a veth pair. Interleaved rounds of wrk for a 1 KiB
# response (req/s, p99) straight to nginx, through an edge route to nginx on the other host (a
# "local" upstream), through edge's tunnel, and through rathole; one 1 GiB download each way;
# time from `edge register` to the first 200; recovery after a 5 s link cut; memory per idle
# session and per open connection. Needs root, iproute2, nginx, wrk, rathole (`cargo install
# rathole`). Every process and the namespace are removed at the end.
#
#   bench/tunnel.sh                 # 3 rounds of 10 s, 32 connections
#   ROUNDS=5 DUR=20 CONNS=64 bench/tunnel.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
CONNS=${CONNS:-32}
RATHOLE=${RATHOLE:-$(command -v rathole || echo "$HOME/.cargo/bin/rathole")}
[[ -x $RATHOLE ]] || { echo "rathole not found: cargo install rathole (or RATHOLE=path)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" >&2
EDGE=$ROOT/target/release/edge

TAG=$(( $$ % 100000 ))
NS=edge-b$TAG
H=vb${TAG}h
W=vb${TAG}w
NET=10.198.$(( TAG % 250 ))
RUN=$(mktemp -d /tmp/edge-tunnel-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
inns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
ip link add "$H" type veth peer name "$W"
ip link set "$W" netns "$NS"
ip addr add "$NET.1/30" dev "$H"; ip link set "$H" up
inns ip addr add "$NET.2/30" dev "$W"; inns ip link set "$W" up; inns ip link set lo up

# The project host's nginx: a 1 KiB page and a 1 GiB file.
mkdir -p "$RUN/www"
head -c 1024 /dev/zero | tr '\0' 'x' > "$RUN/www/1k"
truncate -s 1G "$RUN/www/1g"
chmod -R a+rX "$RUN"   # nginx's workers are not root
cat > "$RUN/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $RUN/nginx.pid; error_log $RUN/nginx-error.log error;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $RUN/b; proxy_temp_path $RUN/p;
  fastcgi_temp_path $RUN/f; uwsgi_temp_path $RUN/u; scgi_temp_path $RUN/s;
  keepalive_requests 1000000;
  server { listen 0.0.0.0:8080; root $RUN/www; } }
CONF
inns "$NGINX" -p "$RUN" -c "$RUN/nginx.conf" & PIDS+=($!)

# The edge: a "local" project whose upstream is the other host's nginx, and [register].
cat > "$RUN/edge.toml" <<CONF
domain = "example.test"
state_dir = "$RUN/edge-state"
[listen]
https = ""
http = "127.0.0.1:9300"
admin = "127.0.0.1:9301"
http_redirect = false
[log]
access = false
[register]
listen = "$NET.1:7443"
[[projects]]
name = "local"
  [[projects.routes]]
  mount = "forge"
  upstream = "http://$NET.2:8080"
CONF
"$EDGE" up --config "$RUN/edge.toml" > "$RUN/edge.out" 2> "$RUN/edge.log" & EDGE_PID=$!; PIDS+=($EDGE_PID)

# rathole: its server here, its client on the project host; twice: with its default transport,
# plain TCP (unencrypted, where edge's session is TLS 1.3), and with Noise (encrypted, as edge).
cat > "$RUN/rathole-server.toml" <<CONF
[server]
bind_addr = "$NET.1:2333"
[server.services.web]
token = "bench-token"
bind_addr = "127.0.0.1:9400"
CONF
cat > "$RUN/rathole-client.toml" <<CONF
[client]
remote_addr = "$NET.1:2333"
[client.services.web]
token = "bench-token"
local_addr = "127.0.0.1:8080"
CONF
KEYS=$("$RATHOLE" --genkey)
PRIV=$(awk '/Private Key/ {getline; print}' <<<"$KEYS")
PUB=$(awk '/Public Key/ {getline; print}' <<<"$KEYS")
cat > "$RUN/rathole-noise-server.toml" <<CONF
[server]
bind_addr = "$NET.1:2334"
[server.transport]
type = "noise"
[server.transport.noise]
local_private_key = "$PRIV"
[server.services.web]
token = "bench-token"
bind_addr = "127.0.0.1:9401"
CONF
cat > "$RUN/rathole-noise-client.toml" <<CONF
[client]
remote_addr = "$NET.1:2334"
[client.transport]
type = "noise"
[client.transport.noise]
remote_public_key = "$PUB"
[client.services.web]
token = "bench-token"
local_addr = "127.0.0.1:8080"
CONF
RUST_LOG=warn "$RATHOLE" --server "$RUN/rathole-server.toml" > "$RUN/rathole-server.log" 2>&1 & RS_PID=$!; PIDS+=($RS_PID)
RUST_LOG=warn "$RATHOLE" --server "$RUN/rathole-noise-server.toml" > "$RUN/rathole-noise-server.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:9301/healthz && break; sleep 0.1; done
RUST_LOG=warn inns "$RATHOLE" --client "$RUN/rathole-client.toml" > "$RUN/rathole-client.log" 2>&1 & PIDS+=($!)
RUST_LOG=warn inns "$RATHOLE" --client "$RUN/rathole-noise-client.toml" > "$RUN/rathole-noise-client.log" 2>&1 & PIDS+=($!)

# edge register, timed to the first 200.
TOKEN=$("$EDGE" register token create demo --config "$RUN/edge.toml" | tail -1)
T0=$(date +%s.%N)
inns "$EDGE" register demo --edge "$NET.1:7443" --token "$TOKEN" --route "forge=http://127.0.0.1:8080" --state "$RUN/host" > "$RUN/host.out" 2> "$RUN/host.log" & PIDS+=($!)
until [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: demo.example.test' http://127.0.0.1:9300/forge/1k) == 200 ]]; do sleep 0.005; done
T1=$(date +%s.%N)
# A second host over TLS + TCP (the first one took QUIC).
TOKEN=$("$EDGE" register token create demotcp --config "$RUN/edge.toml" | tail -1)
inns "$EDGE" register demotcp --transport tcp --edge "$NET.1:7443" --token "$TOKEN" --route "forge=http://127.0.0.1:8080" --state "$RUN/host-tcp" > "$RUN/host-tcp.out" 2> "$RUN/host-tcp.log" & PIDS+=($!)
until [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: demotcp.example.test' http://127.0.0.1:9300/forge/1k) == 200 ]]; do sleep 0.05; done
REGISTER_MS=$(echo "($T1 - $T0) * 1000" | bc -l)
for port in 9400 9401; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/1k" && break; sleep 0.1; done
done

declare -A URL HOSTH
URL[direct]="http://$NET.2:8080/1k";      HOSTH[direct]="x"
URL[edge-local]="http://127.0.0.1:9300/forge/1k"; HOSTH[edge-local]="local.example.test"
URL[edge-quic]="http://127.0.0.1:9300/forge/1k"; HOSTH[edge-quic]="demo.example.test"
URL[edge-tcp]="http://127.0.0.1:9300/forge/1k"; HOSTH[edge-tcp]="demotcp.example.test"
URL[rathole]="http://127.0.0.1:9400/1k";  HOSTH[rathole]="x"
URL[rathole-noise]="http://127.0.0.1:9401/1k";  HOSTH[rathole-noise]="x"
TARGETS="direct edge-local edge-quic edge-tcp rathole rathole-noise"

# CPU per request of each process on the path (user + system, from /proc), so the tunnel's
# own cost shows apart from the HTTP proxying: "near" is the edge or rathole's server, "far" the
# host side or rathole's client.
pid_of() { # the process in the namespace whose command line has $1
  ip netns pids "$NS" | while read -r p; do tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "$1" && echo "$p"; done | head -1 || true
}
RS_NOISE_PID=$(pgrep -f "rathole-noise-server.toml" | head -1)
declare -A NEAR FAR
NEAR[direct]=""; FAR[direct]=""
NEAR[edge-local]=$EDGE_PID; FAR[edge-local]=""
NEAR[edge-quic]=$EDGE_PID; FAR[edge-quic]=$(pid_of "register demo ")
NEAR[edge-tcp]=$EDGE_PID; FAR[edge-tcp]=$(pid_of "register demotcp")
NEAR[rathole]=$RS_PID; FAR[rathole]=$(pid_of "rathole-client.toml")
NEAR[rathole-noise]=$RS_NOISE_PID; FAR[rathole-noise]=$(pid_of "rathole-noise-client.toml")
ticks() { [[ -n $1 ]] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
TCK=$(getconf CLK_TCK)

printf '# wrk -t2 -c%s -d%ss, 1 KiB, %s interleaved rounds; CPU µs per request near (edge / rathole server) and far (host side / rathole client)\n' "$CONNS" "$DUR" "$ROUNDS"
printf '%-14s %6s %10s %10s %8s %8s\n' target round req/s p99 near far
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    n0=$(ticks "${NEAR[$t]}"); f0=$(ticks "${FAR[$t]}")
    out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -H "Host: ${HOSTH[$t]}" "${URL[$t]}")
    n1=$(ticks "${NEAR[$t]}"); f1=$(ticks "${FAR[$t]}")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    printf '%-14s %6s %10s %10s %8.1f %8.1f %s\n' "$t" "$r" "$rps" "$p99" \
      "$(echo "($n1-$n0)*1000000/$TCK/$reqs" | bc -l)" "$(echo "($f1-$f0)*1000000/$TCK/$reqs" | bc -l)" "$errs"
  done
done

printf '\n# one 1 GiB download, %s interleaved rounds\n' "$ROUNDS"
for r in $(seq "$ROUNDS"); do
  for t in direct edge-quic edge-tcp rathole rathole-noise; do
    url=${URL[$t]%1k}1g
    s=$(curl -s -o /dev/null -H "Host: ${HOSTH[$t]}" -w '%{speed_download} %{size_download}' "$url")
    printf '%-14s %s %8.0f MB/s (%s bytes)\n' "$t" "$r" "$(echo "${s% *} / 1000000" | bc -l)" "${s#* }"
  done
done
printf '\n# edge register -> first 200: %.0f ms\n' "$REGISTER_MS"

# Memory: edge's RSS with 200 idle keep-alive connections through the tunnel, and rathole's
# (server + client) with 200 through it.
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
RC_PID=$(ip netns pids "$NS" | while read -r p; do tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q "rathole-client.toml" && echo "$p"; done | head -1 || true)
HC_PID=$(ip netns pids "$NS" | while read -r p; do tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q "register demotcp" && echo "$p"; done | head -1 || true)
echo "pids: edge $EDGE_PID host $HC_PID rathole server $RS_PID client $RC_PID" >&2
hold() { # hold N keep-alive connections open to URL with Host, for S seconds
  python3 - "$@" <<'PY' &
import socket, sys, time
host, port, h, n, s = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
path = sys.argv[6]
socks = []
for _ in range(n):
    c = socket.create_connection((host, port))
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: {h}\r\n\r\n".encode())
    c.recv(4096)
    socks.append(c)
time.sleep(s)
PY
}
# Memory per idle session: 16 more hosts holding one session each, over each transport; the
# edge's RSS before and after, and each host's own RSS.
printf '\n# memory per idle session (16 hosts, --lanes 1)\n'
for tr in tcp quic; do
  e0=$(rss $EDGE_PID); HPIDS=()
  for i in $(seq 16); do
    T=$("$EDGE" register token create "idle$tr$i" --config "$RUN/edge.toml" | tail -1)
    inns "$EDGE" register "idle$tr$i" --lanes 1 --transport "$tr" --edge "$NET.1:7443" --token "$T" \
      --route "forge=http://127.0.0.1:8080" --state "$RUN/idle-$tr-$i" > /dev/null 2>&1 & HPIDS+=($!)
  done
  for i in $(seq 16); do
    until [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: idle$tr$i.example.test" http://127.0.0.1:9300/forge/1k) == 200 ]]; do sleep 0.05; done
  done
  sleep 2
  e1=$(rss $EDGE_PID); hs=0
  for i in $(seq 16); do hs=$(( hs + $(rss "$(pid_of "register idle$tr$i ")") )); done
  printf '%s: edge +%.0f KiB per session; a host holding one session: %.1f MiB RSS\n' "$tr" \
    "$(echo "($e1-$e0)/16" | bc -l)" "$(echo "$hs/16/1024" | bc -l)"
  for i in $(seq 16); do kill "$(pid_of "register idle$tr$i ")" 2>/dev/null || true; done
  wait "${HPIDS[@]}" 2>/dev/null || true
done

e0=$(rss $EDGE_PID); h0=$(rss "$HC_PID"); r0=$(rss $RS_PID); c0=$(rss "$RC_PID")
hold 127.0.0.1 9300 demotcp.example.test 200 6 /forge/1k; HP=$!
sleep 4; e1=$(rss $EDGE_PID); h1=$(rss "$HC_PID"); wait $HP
hold 127.0.0.1 9400 x 200 6 /1k; RP=$!
sleep 4; r1=$(rss $RS_PID); c1=$(rss "$RC_PID"); wait $RP
printf '\n# memory per open connection (200 idle keep-alive connections; edge over TCP)\n'
printf 'edge: %.1f KiB (edge %.1f + host side %.1f)   rathole: %.1f KiB (server %.1f + client %.1f)\n' \
  "$(echo "(($e1-$e0)+($h1-$h0))/200" | bc -l)" "$(echo "($e1-$e0)/200" | bc -l)" "$(echo "($h1-$h0)/200" | bc -l)" \
  "$(echo "(($r1-$r0)+($c1-$c0))/200" | bc -l)" "$(echo "($r1-$r0)/200" | bc -l)" "$(echo "($c1-$c0)/200" | bc -l)"
printf 'idle RSS: edge %s KiB + host side %s KiB; rathole server %s KiB + client %s KiB\n' "$e0" "$h0" "$r0" "$c0"

# Recovery after a 5 s link cut.
ip link set "$H" down; sleep 5; ip link set "$H" up
T0=$(date +%s.%N)
for t in edge-quic edge-tcp rathole; do
  until [[ $(curl -s --max-time 2 -o /dev/null -w '%{http_code}' -H "Host: ${HOSTH[$t]}" "${URL[$t]}") == 200 ]]; do sleep 0.05; done
  printf '%s back %.2f s after the link came back\n' "$t" "$(echo "$(date +%s.%N) - $T0" | bc -l)"
done
