#!/usr/bin/env bash
# Server-side step log throughput: a step printing N lines (`seq N`) on the server, its
# output captured, stored and streamed to one live SSE client following the step
# (`…/steps/out/log/stream`), against the same step with no client (how much the client
# slows the run; medians of ROUNDS runs each, alternated) and the same lines through
# `betcycle run` (in the same run). Lines/s = N over the step's duration as the server
# records it.
#   usage: bench/log-throughput.sh [N] [ROUNDS]
. "$(dirname "$0")/lib.sh"
n=${1:-1000000}
rounds=${2:-5}
bench_setup
# The step waits half a second first, so the client is following before the lines come;
# every duration below has that half second taken off.
echo "steps: [{ name: out, run: 'sleep 0.5; seq $n' }]" | bench_repo
bench_admin
bench_serve
t0=$(date +%s%N)
"$bin" run --dir "$dir/repo" >/dev/null
t1=$(date +%s%N)
local_rate=$(( n * 1000000000 / (t1 - t0 - 500000000) ))
echo "betcycle run: $n lines in $(( (t1 - t0) / 1000000 - 500 )) ms: $local_rate lines/s"
python3 - "$url" "$token" "$dir/repo" "$n" "$local_rate" "$rounds" <<'PY'
import http.client, json, statistics, sys, threading, time, urllib.parse
from benchkit import Api, row, ts
url, token, repo = sys.argv[1:4]
n, local_rate, rounds = map(int, sys.argv[4:7])
api = Api(url, token)
api("POST", "/api/v1/projects", {"slug": "logs", "repository": repo})
def follow(number, seen):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port)
    c.request("GET", f"/api/v1/projects/logs/runs/{number}/steps/out/log/stream",
              headers={"authorization": f"Bearer {token}"})
    r = c.getresponse()
    # While the step runs the client only keeps what arrives (a viewer elsewhere costs
    # this machine nothing); every event is checked once the stream has ended.
    chunks, tail = [], b""
    while True:
        chunk = r.read1(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        tail = (tail + chunk)[-32:]
        if b"event: end\n" in tail or b"event: reload\n" in tail:
            break
    for event in b"".join(chunks).split(b"\n\n"):
        if not event.startswith(b"event: "):
            continue  # a keep-alive comment, or the empty rest
        kind = event[7:event.index(b"\n")]
        if kind == b"lines":
            data = event[event.index(b"\ndata: ") + 7:].split(b"\n", 1)[0]
            batch = json.loads(data)
            assert batch["first"] == seen["lines"] + 1, (batch["first"], seen["lines"])
            seen["lines"] += len(batch["html"])
        elif kind in (b"end", b"reload"):
            seen[kind.decode()] = True
def run(with_client):
    number = api("POST", "/api/v1/projects/logs/runs", {})["number"]
    seen = {"lines": 0}
    while True:
        run = api("GET", f"/api/v1/projects/logs/runs/{number}")
        started = run["steps"] and run["steps"][0].get("started_at")
        if started or run["status"] not in ("queued", "running"):
            break
        time.sleep(0.005)
    client = None
    if with_client:
        client = threading.Thread(target=follow, args=(number, seen)); client.start()
    while run["status"] in ("queued", "running"):
        time.sleep(0.05)
        run = api("GET", f"/api/v1/projects/logs/runs/{number}")
    if client:
        client.join(timeout=120)
    step = run["steps"][0]
    assert run["status"] == "succeeded", run
    return ts(step["finished_at"]) - ts(step["started_at"]) - 0.5, seen
# Alternated, medians: this machine's noise is larger than the effect measured.
alone, followed = [], []
for _ in range(rounds):
    alone.append(run(False)[0])
    took, seen = run(True)
    followed.append(took)
    assert seen["lines"] == n and not seen.get("reload"), seen
alone, followed = statistics.median(alone), statistics.median(followed)
rate = n / followed
slowed = (followed / alone - 1) * 100
print(f"server, no client: {n / alone:,.0f} lines/s; with a live SSE client: {rate:,.0f} lines/s "
      f"(slowed {slowed:+.0f} %); client got {seen['lines']:,} of {n:,} lines"
      f"{', then reload' if seen.get('reload') else ''}")
row(f"step log capture + store + live stream, {n:,} lines", "≥ 1M lines/s", f"{rate:,.0f} lines/s",
    f"betcycle run: {local_rate:,} lines/s", f"{rate / local_rate:.2f}")
row(f"a live SSE client following a {n:,}-line step", "every line, no reload, run slowed ≤ 10 %",
    f"{seen['lines']:,} lines{', reload' if seen.get('reload') else ''}, slowed {slowed:+.0f} %",
    f"the same step with no client: {n / alone:,.0f} lines/s", f"{followed / alone:.2f}")
PY
bench_stop
