#!/usr/bin/env bash
# Memory of a long-running server: the RSS of `serve` after it has run N runs (a one-step
# pipeline triggered through the API, 20 at a time) against a fresh process on the same
# store that has run only a warm-up of W runs (so the same code paths have been used
# once), in the same run. The first server's RSS after its own warm-up is printed too.
#   usage: bench/memory.sh [N]
. "$(dirname "$0")/lib.sh"
n=${1:-10000}
warm=$(( n / 10 < 100 ? n / 10 : 100 ))
bench_setup
echo "steps: [{ name: s, run: 'true' }]" | bench_repo
bench_admin
rss() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
runs() {
  python3 - "$url" "$token" "$1" <<'PY'
import sys
from benchkit import Api
api, count = Api(sys.argv[1], sys.argv[2]), int(sys.argv[3])
for _ in range(0, count, 20):
    numbers = [api("POST", "/api/v1/projects/mem/runs", {})["number"] for _ in range(20)]
    for number in numbers:
        assert api.wait_run("mem", number)["status"] == "succeeded"
PY
  sleep 1
}
bench_serve
curl -sf -o /dev/null -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"slug\": \"mem\", \"repository\": \"$dir/repo\"}" "$url/api/v1/projects"
runs "$warm"
first_warm=$(rss)
t0=$(date +%s)
runs $(( n - warm ))
long=$(rss)
echo "server: $first_warm MiB after $warm runs, $long MiB after $n runs ($(( $(date +%s) - t0 )) s)"
bench_stop
bench_serve
runs "$warm"
fresh=$(rss)
echo "a fresh process on the same store: $fresh MiB after $warm runs"
bench_stop
row "RSS of serve after $n runs" "≤ 1.2× a fresh process" "$long MiB" \
  "a fresh process on the same store, after $warm runs: $fresh MiB" \
  "$(awk -v a="$long" -v b="$fresh" 'BEGIN { printf "%.2f", a / b }')"
