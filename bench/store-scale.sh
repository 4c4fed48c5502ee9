#!/usr/bin/env bash
# A store with history: for each size in RUNS (seeded with the hidden `betcycle dev seed`:
# 10 projects, finished runs with steps, tests, coverage, artifacts and audit entries),
#   - start to ready (median of 5 starts) against the same binary on an empty store;
#   - the runs API (`GET /api/v1/projects/seed-1/runs?limit=20`, keep-alive, one client),
#     also filtered (`status=failed`: one run in ten; `branch=feature-1`: one in 485),
#     p50/p99 against the store's own listing in-process with the same filter
#     (`betcycle dev list-runs`: the index range scan and record reads behind it, without
#     HTTP or JSON);
#   - time to first byte of the project page and a run page, p50/p99;
# and at the largest size the idle RSS after a walk of every console page and GET API
# route (each twice), against the same server's RSS right after start.
#   usage: bench/store-scale.sh [RUNS...]     (default 100000 1000000)
. "$(dirname "$0")/lib.sh"
sizes=("$@")
[ $# -gt 0 ] || sizes=(100000 1000000)
bench_setup
bench_admin

start_median() { # median start-to-ready in ms over 5 starts
  local times=()
  for _ in 1 2 3 4 5; do
    local t0 t1
    t0=$(date +%s%N); bench_serve; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 ))); bench_stop
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n 3p | awk '{ printf "%.1f", $1 / 1000 }'
}

bench_serve; bench_stop   # creates the store
empty=$(start_median)
echo "start to ready, empty store: $empty ms"
have=0
for n in "${sizes[@]}"; do
  "$bin" dev seed --runs $((n - have)) --data-dir "$dir/data"
  have=$n
  started=$(start_median)
  echo "start to ready, $n runs: $started ms"
  row "start to ready, $n runs stored" "≤ 100 ms" "$started ms" "empty store: $empty ms" \
    "$(awk -v a="$started" -v b="$empty" 'BEGIN { printf "%.2f", a / b }')"
  scan() { "$bin" dev list-runs --project seed-1 --limit 20 --repeat 2000 --data-dir "$dir/data" "$@"; }
  scans=("$(scan)" "$(scan --status failed)" "$(scan --branch feature-1)")
  printf '%s\n' "${scans[@]}"
  bench_serve
  python3 - "$url" "$token" "$n" "${scans[@]}" <<'PY'
import http.client, sys, time, urllib.parse
url, token, n = sys.argv[1:4]
scans = [[float(x.split()[0]) for x in scan.split("p50 ")[1].split(", p99 ")] for scan in sys.argv[4:7]]
u = urllib.parse.urlparse(url)
c = http.client.HTTPConnection(u.hostname, u.port)
def times(path, count):
    out = []
    for _ in range(count):
        t = time.perf_counter()
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()          # the status line and headers: the first byte is in
        first = time.perf_counter() - t
        r.read()
        assert r.status == 200, (path, r.status)
        out.append(first * 1000)
    out.sort()
    return out[len(out) // 2], out[min(len(out) - 1, int(len(out) * 0.99))]
for name, path, target, (scan_p50, scan_p99) in [
    ("runs API, 20 newest", "/api/v1/projects/seed-1/runs?limit=20", "p99 ≤ 20 ms", scans[0]),
    ("runs API, 20 newest failed", "/api/v1/projects/seed-1/runs?status=failed&limit=20",
     "p99 ≤ 20 ms", scans[1]),
    ("runs API, 20 newest on one branch", "/api/v1/projects/seed-1/runs?branch=feature-1&limit=20",
     "p99 ≤ 20 ms", scans[2]),
    ("project page, time to first byte", "/projects/seed-1", "≤ 20 ms", scans[0]),
    ("run page, time to first byte", "/projects/seed-1/runs/1", "≤ 20 ms", scans[0]),
]:
    p50, p99 = times(path, 300)
    print(f"{name} ({n} runs): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"ROW\t{name}, {n} runs stored\t{target}\tp50 {p50:.2f} ms, p99 {p99:.2f} ms\t"
          f"store listing in-process: p50 {scan_p50:.3f} ms, p99 {scan_p99:.3f} ms\t{p99 / scan_p99:.1f}")
PY
  bench_stop
done

# Idle memory: right after start, then after walking every page and GET route twice.
bench_serve
sleep 1
fresh=$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
paths=$("$bin" routes | awk '$1 == "GET" { print $2 }' | grep -v -e '/stream' -e '/events' \
  -e '/artifacts/' -e '/backup' | sed -e 's/{slug}/seed-1/; s/{number}/1/; s/{step}/test/' |
  grep -v '{')
for _ in 1 2; do
  for path in $paths; do
    curl -s -o /dev/null -H "Authorization: Bearer $token" "$url$path"
  done
done
sleep 2
walked=$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
echo "idle RSS: $fresh MiB after start, $walked MiB after walking $(echo "$paths" | wc -l) GET routes twice"
row "idle RSS of serve after a walk of every page (${sizes[-1]} runs stored)" "≤ 20 MiB" \
  "$walked MiB" "the same server right after start: $fresh MiB" \
  "$(awk -v a="$walked" -v b="$fresh" 'BEGIN { printf "%.2f", a / b }')"
bench_stop
