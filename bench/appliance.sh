#!/usr/bin/env bash
# Measures the appliance itself with the release binary: idle memory (RSS) after a
# little traffic, and start-to-ready time (process start → first 200 from /readyz),
# over N fresh starts on an existing data directory.
#   usage: bench/appliance.sh [N]   (builds target/release/betcycle if missing; every
#   bench script measures another build with BETCYCLE_BIN=PATH, see bench/lib.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
. bench/lib.sh
bin=$(betcycle_bin)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port

wait_ready() { until curl -sf -o /dev/null "$url/readyz"; do sleep 0.001; done; }

# An administrator and a token, so the traffic below renders real pages.
echo "bench password 123" | "$bin" user add bench --admin --password-stdin --data-dir "$dir/data" >/dev/null
token=$("$bin" token create --user bench --scope admin --data-dir "$dir/data")

# Start-to-ready over n starts (the first one creates the store and is not counted).
"$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --log-format json 2>/dev/null &
wait_ready; kill -TERM $!; wait $! || true
times=()
for _ in $(seq "$n"); do
  t0=$(date +%s%N)
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --log-format json 2>/dev/null &
  pid=$!
  wait_ready
  t1=$(date +%s%N)
  times+=($(( (t1 - t0) / 1000 )))
  kill -TERM $pid; wait $pid || true
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
echo "start-to-ready over $n starts: median $(( sorted[n/2] / 1000 )).$(( sorted[n/2] % 1000 / 100 )) ms, max $(( sorted[n-1] / 1000 )).$(( sorted[n-1] % 1000 / 100 )) ms"

# Idle RSS after some traffic on every page.
"$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --log-format json 2>/dev/null &
pid=$!
wait_ready
for _ in $(seq 50); do
  for path in / /readyz /metrics /api/v1/instance /static/app.css /static/htmx.min.js /account /security/audit; do
    curl -sf -o /dev/null -H "Authorization: Bearer $token" "$url$path"
  done
done
sleep 2
echo "idle RSS after 400 authenticated requests: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status)"
kill -TERM $pid; wait $pid || true
