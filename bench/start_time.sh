#!/usr/bin/env bash
# Time from launch to "ready" of a ragtime server, by phase, with its peak RSS; the server is then
# stopped. Run from the repo root:
#   bash bench/start_time.sh MODEL CACHE_DIR [server flags...]
# CACHE_DIR is the graph cache: empty it first for a cold start (rm -rf), keep it for a warm one.
# Prints the server's phase lines ("loading: X (at N s)"), its graph/capture lines, the ready line
# and GNU time's wall clock and maximum resident set size. STOP_AT=warmup stops the server when its
# warmup begins (the phases before it are the loading; on a software adapter the warmup's first steps
# of a large model take minutes of CPU that no loading change affects).
set -uo pipefail
model=$1 cache=$2
shift 2
port=${PORT:-$((20000 + RANDOM % 20000))}
log=$(mktemp)
# GNU time for the peak RSS where it is installed.
tv=()
[ -x /usr/bin/time ] && tv=(/usr/bin/time -v)
"${tv[@]}" deno run -A main.ts --model "$model" --graph-cache "$cache" --port "$port" "$@" >"$log" 2>&1 &
tpid=$!
server=""
[ ${#tv[@]} -eq 0 ] && server=$tpid
for _ in $(seq 1 3000); do
  [ -z "$server" ] && server=$(pgrep -P "$tpid" | head -1)
  grep -q -E "ready in|failed to load${STOP_AT:+|^loading: $STOP_AT}" "$log" && break
  kill -0 "$tpid" 2>/dev/null || break
  sleep 0.2
done
# A server still loading drains only once loaded: STOP_AT kills it outright instead.
sig=TERM
[ -n "${STOP_AT:-}" ] && sig=KILL
[ -n "$server" ] && kill -$sig "$server" 2>/dev/null
wait "$tpid"
grep -E "^loading: [a-z]|^graph|^weights|^kv cache|ready in|failed|Elapsed \(wall|Maximum resident" "$log"
rm -f "$log"
