#!/usr/bin/env bash
# Durable record writes through the API: `POST /api/v1/teams` (a team and its audit entry,
# committed with fsync before the 201) for SECONDS seconds with 1, 8 and 64 keep-alive
# clients (wrk), against a bare loop of 4 KiB write + fdatasync on the same disk from 1 and
# from 8 threads (the single-fsync limit, and what concurrent syncs reach).
#   usage: bench/writes.sh [SECONDS]     (needs wrk: apt-get install wrk)
. "$(dirname "$0")/lib.sh"
seconds=${1:-10}
bench_setup
bench_admin
bench_serve
cat > "$dir/teams.lua" <<'LUA'
-- Each request a new team: the run (RUN), the wrk thread (id) and a counter name it.
local threads, counter = 0, 0
function setup(thread) threads = threads + 1; thread:set("id", threads) end
request = function()
  counter = counter + 1
  local body = string.format('{"name":"t%s-%d-%d"}', os.getenv("RUN"), id, counter)
  return wrk.format("POST", "/api/v1/teams", {
    ["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
    ["Content-Type"] = "application/json",
  }, body)
end
LUA
declare -A rate
for clients in 1 8 64; do
  out=$(RUN=$clients TOKEN=$token wrk -t $(( clients < 2 ? clients : 2 )) -c "$clients" -d "${seconds}s" \
    --latency -s "$dir/teams.lua" "$url" 2>&1)
  rate[$clients]=$(echo "$out" | awk '/Requests\/sec/ { printf "%.0f", $2 }')
  p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
  if echo "$out" | grep -q -e 'Non-2xx' -e 'Socket errors'; then
    echo "$out" >&2; echo "writes failed with $clients clients" >&2; exit 1
  fi
  echo "API, $clients client(s): ${rate[$clients]} writes/s, p99 $p99"
done
bench_stop
fsync=$(python3 - "$dir" "$seconds" <<'PY'
import os, sys, threading, time
d, secs = sys.argv[1], min(float(sys.argv[2]), 5)
def loop(path, counts, i):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block, n, end = b"x" * 4096, 0, time.perf_counter() + secs
    while time.perf_counter() < end:
        os.pwrite(fd, block, (n % 256) * 4096); os.fdatasync(fd); n += 1
    os.close(fd); counts[i] = n
for threads in (1, 8):
    counts = [0] * threads
    ts = [threading.Thread(target=loop, args=(f"{d}/fsync-{i}", counts, i)) for i in range(threads)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print(f"{sum(counts) / secs:.0f}")
PY
)
one=$(echo "$fsync" | sed -n 1p); eight=$(echo "$fsync" | sed -n 2p)
echo "bare write+fdatasync: $one/s from 1 thread, $eight/s from 8 threads"
for clients in 1 8 64; do
  target="≥ 3,000/s"; [ "$clients" = 64 ] && target="above the single-fsync limit"
  row "durable writes through the API, $clients client(s)" "$target" "${rate[$clients]}/s" \
    "write+fdatasync loop: $one/s (1 thread), $eight/s (8 threads)" \
    "$(awk -v a="${rate[$clients]}" -v b="$one" 'BEGIN { printf "%.2f", a / b }')"
done
