#!/usr/bin/env bash
# The chat's benchmark: added latency from an agent's stdout to a WebSocket client frame (p50/p99)
# with 1 and 100 runs streaming, frames/s delivered, and edge's memory per idle WebSocket.
# Runs the real `edge up` (release) with a stand-in agent that stamps each line with the time.
#
#   bench/chat.sh   # then 5,000 idle sockets through the gateway (3 fds each), 10,000 to the chat
#   IDLE_SOCKETS=N IDLE_DIRECT=M bench/chat.sh  # idle sockets through the gateway, straight to the chat
#   FANOUT_ONLY=1 bench/chat.sh   # 100 runs streaming at once, three times
#   FANOUT_WHEN=1 ...              # also the p99 of the deltas written in each 100 ms
#   CLOCK_AGENT=perl ...           # the stand-in agent in Perl instead of Python (less CPU per line)
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
IDLE_SOCKETS=${IDLE_SOCKETS:-5000} cargo test --release --locked --test chat_bench -- --ignored --nocapture 2>&1 | grep -E 'streams|idle|first token|panicked|error|sandbox|p99 ms by'
