#!/usr/bin/env bash
# Measures `betcycle db backup` of a running server (through the API: a snapshot of one
# read transaction plus the data directory's files) against the peer `tar czf` of the
# same data directory taken with the server stopped (which is not consistent under
# writes; it is the floor for archiving the same bytes).
#   usage: bench/backup.sh [TEAMS]     (release binary; BETCYCLE_BIN overrides)
. "$(dirname "$0")/lib.sh"
teams=${1:-5000}
bench_setup
bench_admin
bench_serve
# Records: teams (each with its audit entry), over keep-alive connections.
python3 - "$url" "$token" "$teams" <<'PY'
import http.client, json, sys, urllib.parse
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(url)
c = http.client.HTTPConnection(u.hostname, u.port)
for i in range(n):
    c.request("POST", "/api/v1/teams", json.dumps({"name": f"team-{i:06d}"}),
              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 201, r.status
PY
# Step logs and artifacts as a run leaves them: 200 files of 64 KiB.
mkdir -p "$dir/data/runs/1" "$dir/data/artifacts/sha256/ab"
for i in $(seq 200); do head -c 65536 /dev/urandom | base64 > "$dir/data/runs/1/$i.log"; done
size=$(du -sh "$dir/data" | cut -f1)
t0=$(date +%s%N)
BETCYCLE_TOKEN=$token BETCYCLE_SERVER=$url "$bin" db backup "$dir/online.tar.gz" --data-dir "$dir/data" >/dev/null
t1=$(date +%s%N)
online_ms=$(( (t1 - t0) / 1000000 ))
bench_stop
t0=$(date +%s%N)
tar -C "$dir/data" -czf "$dir/peer.tar.gz" --exclude=logs .
t1=$(date +%s%N)
peer_ms=$(( (t1 - t0) / 1000000 ))
t0=$(date +%s%N)
"$bin" db check --backup "$dir/online.tar.gz" >/dev/null
t1=$(date +%s%N)
check_ms=$(( (t1 - t0) / 1000000 ))
echo "data dir $size ($teams teams + 200 log files): db backup (online, via the API, incl. checking the download) ${online_ms} ms, $(du -h "$dir/online.tar.gz" | cut -f1); tar czf (stopped) ${peer_ms} ms, $(du -h "$dir/peer.tar.gz" | cut -f1); ratio $(python3 -c "print(round($online_ms/$peer_ms, 2))"); db check --backup ${check_ms} ms"
