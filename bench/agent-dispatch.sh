#!/usr/bin/env bash
# Agent dispatch latency: N runs, one after another, of a pipeline whose one step has
# `runs_on: [bench]` and prints `go`, with one `betcycle agent` on this host (capacity 1,
# waiting in its long poll). From the step's log (milliseconds since the step was queued):
# queued → claimed by the agent, and queued → the step's first line (the workspace
# fetched and unpacked, `sh -c` started on the agent, the line sent back). The peer, in
# the same run: the same step without `runs_on`, on the server — queued → its first line.
#   usage: bench/agent-dispatch.sh [N]
. "$(dirname "$0")/lib.sh"
n=${1:-30}
bench_setup
printf 'steps:\n  - name: remote\n    runs_on: [bench]\n    run: echo go\n  - name: local\n    depends_on: [remote]\n    run: echo go\n' | bench_repo
bench_admin
bench_serve
curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"slug\":\"demo\",\"repository\":\"$dir/repo\"}" "$url/api/v1/projects" >/dev/null
agent_token=$(curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"name":"bench"}' "$url/api/v1/agents" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
BETCYCLE_AGENT_TOKEN=$agent_token BETCYCLE_LOG_LEVEL=warn "$bin" agent --server "$url" \
  --labels bench --work-dir "$dir/agent" 2>>"$dir/agent.log" &

python3 - "$url" "$token" "$n" <<'PY'
import json, statistics, sys, time, urllib.request
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.read().decode()
def offset(log, text):
    for line in log.splitlines():
        ms, _, rest = line.split(" ", 2)
        if text in rest:
            return int(ms)
    raise SystemExit(f"no {text!r} in {log}")
claimed, remote, local = [], [], []
for i in range(1, n + 1):
    call("POST", "/api/v1/projects/demo/runs", {})
    while json.loads(call("GET", f"/api/v1/projects/demo/runs/{i}"))["status"] in ("queued", "running"):
        time.sleep(0.01)
    log = call("GET", f"/api/v1/projects/demo/runs/{i}/steps/0/log")
    claimed.append(offset(log, "running on agent"))
    remote.append(offset(log, "go"))
    local.append(offset(call("GET", f"/api/v1/projects/demo/runs/{i}/steps/1/log"), "go"))
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
c, r, l = statistics.median(claimed), statistics.median(remote), statistics.median(local)
print(f"{n} runs, one agent on this host waiting in its poll")
print(f"queued -> claimed by the agent: median {c:.0f} ms, p90 {q(claimed, .9)} ms, max {max(claimed)} ms")
print(f"queued -> the step's first line, on the agent: median {r:.0f} ms, p90 {q(remote, .9)} ms")
print(f"queued -> the step's first line, same step on the server: median {l:.0f} ms")
print(f"ROW\tagent dispatch: queued → step running on an agent ({n} runs)\t—\t"
      f"claimed p50 {c:.0f} ms; first line p50 {r:.0f} ms, p90 {q(remote, .9)} ms\t"
      f"the same step on the server: first line p50 {l:.0f} ms\t{r/max(l, 1):.2f}")
PY
