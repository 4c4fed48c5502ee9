#!/usr/bin/env bash
# What the step sandbox costs per step on the server. One release server, one project
# with N sequential `true` steps; the same pipeline is run ROUNDS times with the
# project's isolation `off` (the peer, in the same run) and `standard` and `strict`
# (Landlock rules built before each step's fork and applied in the child). Time per
# run = the run's `finished_at - started_at` as the server records it.
#   usage: bench/sandbox-overhead.sh [N] [ROUNDS]
. "$(dirname "$0")/lib.sh"
n=${1:-50}
rounds=${2:-5}
bench_setup
sequential_steps "$n" | bench_repo
bench_admin
bench_serve --run-concurrency 1

python3 - "$port" "$token" "$dir/repo" "$n" "$rounds" <<'PY'
import statistics, sys, time
from benchkit import Api, ts
port, token, repo, n, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
base = f"http://127.0.0.1:{port}"
api = Api(base, token)
api("POST", "/api/v1/projects", {"slug": "bench", "repository": repo})
def run_once():
    number = api("POST", "/api/v1/projects/bench/runs", {})["number"]
    while True:
        run = api("GET", f"/api/v1/projects/bench/runs/{number}")
        if run["status"] not in ("queued", "running"):
            assert run["status"] == "succeeded", run
            # Steps only: from the first step's start to the last step's end.
            steps = run["steps"]
            return ts(steps[-1]["finished_at"]) - ts(steps[0]["started_at"])
        time.sleep(0.02)
times = {}
for isolation in ["off", "standard", "strict", "off", "standard", "strict"]:
    api("PUT", "/api/v1/projects/bench/isolation", {"isolation": isolation})
    times.setdefault(isolation, []).extend(run_once() for _ in range(rounds))
off = statistics.median(times["off"])
print(f"{n} sequential steps per run, medians of {2 * rounds} runs each")
for isolation in ["off", "standard", "strict"]:
    t = statistics.median(times[isolation])
    print(f"{isolation:9} {t*1000:8.1f} ms  {t/n*1000:.2f} ms/step  sandbox cost {(t-off)/n*1000:+.3f} ms/step  ratio {t/off:.2f}")
PY
