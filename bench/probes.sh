#!/usr/bin/env bash
# Probe cost: N HTTP probes at a 10 s interval (timeout 5 s) against one local target
# (nginx on 127.0.0.1 answering a fixed 200), on a server that runs nothing else. The server's
# CPU (utime + stime from /proc) and peak RSS are measured over WINDOW seconds, once
# every probe has run (11 s after they were made); the same server's idle figures just
# before the probes were made are the reference in the same run.
#   usage: bench/probes.sh [N] [WINDOW]
. "$(dirname "$0")/lib.sh"
n=${1:-1000}
window=${2:-60}
bench_setup
bench_admin
bench_serve
command -v nginx >/dev/null || { echo "bench/probes.sh needs nginx (apt-get install nginx)" >&2; exit 1; }
target_port=$(free_port)
mkdir -p "$dir/site/tmp"
cat > "$dir/site/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/site/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/site/tmp; proxy_temp_path $dir/site/tmp; fastcgi_temp_path $dir/site/tmp;
  uwsgi_temp_path $dir/site/tmp; scgi_temp_path $dir/site/tmp;
  server { listen 127.0.0.1:$target_port; location / { return 200 "ok\n"; } }
}
CONF
nginx -e stderr -p "$dir/site" -c "$dir/site/nginx.conf" 2>>"$dir/site.log" &
until curl -sf -o /dev/null "http://127.0.0.1:$target_port/up"; do sleep 0.01; done

python3 - "$url" "$token" "$pid" "$n" "$window" "$target_port" <<'PY'
import json, os, sys, time, urllib.request
url, token, pid, n, window, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def measure(seconds):
    c0, t0 = cpu(), time.monotonic()
    peak = 0.0
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        peak = max(peak, rss())
    return (cpu() - c0) / (time.monotonic() - t0) * 100, peak
def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
idle_cpu, idle_rss = measure(min(window, 20))
for i in range(n):
    call("POST", "/api/v1/probes", {"name": f"p{i}", "kind": "http",
         "target": f"http://127.0.0.1:{port}/up", "interval": "10s", "timeout": "5s"})
time.sleep(11)  # every probe has run at least once
busy_cpu, busy_rss = measure(window)
probes = call("GET", "/api/v1/probes")
up = sum(1 for p in probes if p["status"] == "up")
print(f"{n} HTTP probes every 10 s ({n/10:.0f} checks/s), {up} up; measured over {window} s")
print(f"server CPU: {busy_cpu:.1f} % of one core (idle: {idle_cpu:.1f} %)")
print(f"server RSS: {busy_rss:.1f} MiB (idle: {idle_rss:.1f} MiB)")
print(f"ROW\t{n} probes at a 10 s interval: server CPU and RSS\t—\t"
      f"CPU {busy_cpu:.1f} % of a core, RSS {busy_rss:.1f} MiB\t"
      f"the same server idle: CPU {idle_cpu:.1f} %, RSS {idle_rss:.1f} MiB\t{busy_rss/max(idle_rss, 1):.2f}")
PY
