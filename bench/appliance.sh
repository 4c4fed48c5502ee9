#!/usr/bin/env bash
# Measures the appliance itself with the release binary: idle memory (RSS) after a
# little traffic, and start-to-ready time (process start → first 200 from /readyz),
# over N fresh starts on an existing data directory.
#   usage: bench/appliance.sh [N]   (builds target/release/betcycle if missing; every
#   bench script measures another build with BETCYCLE_BIN=PATH, see bench/lib.sh)
. "$(dirname "$0")/lib.sh"
n=${1:-20}
bench_setup
# An administrator and a token, so the traffic below renders real pages.
bench_admin

# Start-to-ready over n starts (the first one creates the store and is not counted).
bench_serve; bench_stop
times=()
for _ in $(seq "$n"); do
  t0=$(date +%s%N)
  bench_serve
  t1=$(date +%s%N)
  times+=($(( (t1 - t0) / 1000 )))
  bench_stop
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
echo "start-to-ready over $n starts: median $(( sorted[n/2] / 1000 )).$(( sorted[n/2] % 1000 / 100 )) ms, max $(( sorted[n-1] / 1000 )).$(( sorted[n-1] % 1000 / 100 )) ms"

# Idle RSS after some traffic on every page.
bench_serve
for _ in $(seq 50); do
  for path in / /readyz /metrics /api/v1/instance /static/app.css /static/htmx.min.js /account /security/audit; do
    curl -sf -o /dev/null -H "Authorization: Bearer $token" "$url$path"
  done
done
sleep 2
echo "idle RSS after 400 authenticated requests: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status)"
bench_stop
