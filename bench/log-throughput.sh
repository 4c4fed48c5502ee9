#!/usr/bin/env bash
# Server-side step log throughput: a step printing N lines (`seq N`) on the server, its
# output captured, stored and streamed to one live SSE client following the step
# (`…/steps/out/log/stream`), against the same step with no client (how much the client
# slows the run) and the same lines through `betcycle run` (in the same run). Lines/s =
# N over the step's duration as the server records it.
#   usage: bench/log-throughput.sh [N]
. "$(dirname "$0")/lib.sh"
n=${1:-1000000}
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
python3 - "$url" "$token" "$dir/repo" "$n" "$local_rate" <<'PY'
import http.client, sys, threading, time, urllib.parse
from benchkit import Api, row, ts
url, token, repo, n, local_rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
api = Api(url, token)
api("POST", "/api/v1/projects", {"slug": "logs", "repository": repo})
def follow(number, seen):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port)
    c.request("GET", f"/api/v1/projects/logs/runs/{number}/steps/out/log/stream",
              headers={"authorization": f"Bearer {token}"})
    r = c.getresponse()
    # Counted in whole reads (bytes.count), so the client costs little CPU of its own.
    carry = b""
    while True:
        chunk = r.read1(1 << 16)
        if not chunk:
            break
        data = carry + chunk
        seen["lines"] += data.count(b"event: line\n") - carry.count(b"event: line\n")
        for end in (b"end", b"reload"):
            if b"event: " + end + b"\n" in data:
                seen[end.decode()] = True
        if seen.get("end") or seen.get("reload"):
            break
        carry = data[-16:]
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
alone, _ = run(False)
followed, seen = run(True)
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
