#!/usr/bin/env bash
# Webhook received → first step running. A release server with a local repository; N
# signed GitHub push deliveries (each for a new commit) are sent one after another. For
# each, the time from the delivery's `received_at` to the first step's `started_at` (both
# recorded by the server) is taken. In the same run, the peer: the same work done by
# hand with git and sh — fetch the commit into a bare mirror, clone it locally, check it
# out and spawn `sh -c true` — timed from Python.
#   usage: bench/webhook-latency.sh [N]
. "$(dirname "$0")/lib.sh"
n=${1:-30}
bench_setup
printf 'steps:\n  - name: first\n    run: "true"\n' | bench_repo
bench_admin
bench_serve

python3 - "$dir" "$port" "$token" "$n" <<'PY'
import hashlib, hmac, json, statistics, subprocess, sys, time
from benchkit import Api, ts
d, port, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = f"http://127.0.0.1:{port}"
api = Api(base, token)
repo = f"{d}/repo"
git = lambda *a: subprocess.run(["git", "-C", repo, *a], check=True, capture_output=True, text=True).stdout.strip()
api("POST", "/api/v1/projects", {"slug": "bench", "repository": repo})
secret = hashlib.sha256(str(time.time()).encode()).hexdigest()
api("PUT", "/api/v1/projects/bench/secrets/WEBHOOK_SECRET", {"value": secret})
latencies = []
for i in range(n + 1):
    before = git("rev-parse", "HEAD")
    open(f"{repo}/f.txt", "w").write(str(i))
    git("commit", "-qam", f"c{i}")
    after = git("rev-parse", "HEAD")
    body = json.dumps({"ref": "refs/heads/main", "before": before, "after": after,
                       "commits": [{"id": after, "added": [], "removed": [], "modified": ["f.txt"]}],
                       "pusher": {"name": "bench"}}).encode()
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    receipt = api("POST", "/api/v1/hooks/bench", body, {
        "X-GitHub-Event": "push", "X-GitHub-Delivery": f"bench-{i}", "X-Hub-Signature-256": f"sha256={sig}"})
    number = receipt["delivery"]["runs"][0]
    while True:
        run = api("GET", f"/api/v1/projects/bench/runs/{number}")
        if run["status"] not in ("queued", "running"):
            break
        time.sleep(0.01)
    if i == 0:
        continue  # the first delivery creates the mirror
    received = ts(receipt["delivery"]["received_at"])
    started = ts(run["steps"][0]["started_at"])
    latencies.append((started - received) * 1000)

# The peer: the same git and process work, by hand.
peer = []
subprocess.run(["git", "init", "-q", "--bare", f"{d}/mirror.git"], check=True)
for i in range(n):
    open(f"{repo}/f.txt", "w").write(f"peer {i}")
    git("commit", "-qam", f"p{i}")
    sha = git("rev-parse", "HEAD")
    ws = f"{d}/ws{i}"
    t = time.perf_counter()
    subprocess.run(["git", "-C", f"{d}/mirror.git", "fetch", "-q", "--prune", repo, "+refs/heads/*:refs/heads/*"], check=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", f"{d}/mirror.git", ws], check=True)
    subprocess.run(["git", "-C", ws, "checkout", "-q", "--detach", sha], check=True)
    subprocess.run(["sh", "-c", "true"], check=True)
    peer.append((time.perf_counter() - t) * 1000)

ordered = sorted(latencies)
med, p90 = statistics.median(latencies), ordered[int(len(latencies) * 0.9) - 1]
p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
pm = statistics.median(peer)
print(f"{n} signed push deliveries, one at a time")
print(f"betcycle: webhook received -> first step running: median {med:.1f} ms, p90 {p90:.1f} ms, max {max(latencies):.1f} ms")
print(f"peer (git fetch + local clone + checkout + sh -c true by hand): median {pm:.1f} ms")
print(f"ratio betcycle/peer: {med/pm:.2f}")
print(f"ROW\twebhook received → first step running ({n} pushes)\tp50 ≤ 1.2× the peer, p99 ≤ 50 ms\t"
      f"p50 {med:.1f} ms, p99 {p99:.1f} ms\tgit fetch + clone + checkout + sh by hand: p50 {pm:.1f} ms\t{med/pm:.2f}")
PY
