#!/usr/bin/env bash
# The built-in proxy. The upstream is nginx answering a fixed 200 (one worker), run as a
# `service` release by BetCycle's own supervisor; wrk loads it for SECS seconds each
# through BetCycle's proxy, through nginx proxying to the same instance (keep-alive pool,
# as many workers as cores; ROUNDS times each, alternated) and directly. Then SWITCHES
# blue-green deployments under constant load through BetCycle's proxy, counting every
# failed request.
#   usage: bench/proxy.sh [SECS] [SWITCHES] [ROUNDS]
. "$(dirname "$0")/lib.sh"
secs=${1:-10}
switches=${2:-20}
rounds=${3:-3}
for tool in nginx wrk; do
  command -v $tool >/dev/null || { echo "bench/proxy.sh needs $tool (apt-get install $tool)" >&2; exit 1; }
done
bench_setup
nginx_bin=$(command -v nginx)

# The release: nginx on $PORT, everything it writes in its checkout.
printf 'steps:\n  - { name: build, run: "true" }\ndeploy:\n  bench:\n    target: { kind: service, command: "sh start.sh", host: app.bench, health: { path: /, interval: 200ms }, stop_grace: 5s }\n    strategy: { kind: blue_green, drain: 10s }\n' | bench_repo
cat > "$dir/repo/upstream.conf" <<'EOF'
worker_processes 1;
daemon off;
pid @DIR@/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path @DIR@/tmp; proxy_temp_path @DIR@/tmp; fastcgi_temp_path @DIR@/tmp;
  uwsgi_temp_path @DIR@/tmp; scgi_temp_path @DIR@/tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:@PORT@; location / { return 200 "ok @RELEASE@\n"; } }
}
EOF
cat > "$dir/repo/start.sh" <<EOF
mkdir -p tmp
sed "s/@PORT@/\$PORT/; s#@DIR@#\$PWD#g; s/@RELEASE@/\$BETCYCLE_RELEASE/" upstream.conf > nginx.conf
exec $nginx_bin -e stderr -p "\$PWD" -c "\$PWD/nginx.conf"
EOF
git -C "$dir/repo" add -A && git -C "$dir/repo" commit -qm upstream
bench_admin
proxy_port=$(free_port)
bench_serve --proxy-listen "127.0.0.1:$proxy_port"

# Two releases of the same upstream, the first one deployed.
upstream_port=$(python3 - "$url" "$token" "$dir/repo" <<'PY'
import subprocess, sys, time
from benchkit import Api
api = Api(sys.argv[1], sys.argv[2])
repo = sys.argv[3]
api("POST", "/api/v1/projects", {"slug": "bench", "repository": repo})
api("PUT", "/api/v1/projects/bench/environments/bench", {})
for i in range(2):
    subprocess.run(["git", "-C", repo, "commit", "-q", "--allow-empty", "-m", f"r{i}"], check=True)
    run = api("POST", "/api/v1/projects/bench/runs", {})
    assert api.wait_run("bench", run["number"])["status"] == "succeeded"
d = api("POST", "/api/v1/projects/bench/deployments", {"environment": "bench", "release": 1})
while d["status"] not in ("succeeded", "failed", "rolled_back"):
    time.sleep(0.05)
    d = api("GET", f"/api/v1/projects/bench/deployments/{d['number']}")
assert d["status"] == "succeeded", d
print(api("GET", "/api/v1/projects/bench/environments/bench/service")["stable"]["instances"][0]["port"])
PY
)

# The peer: nginx proxying to the same instance over a keep-alive pool, adding the same
# headers BetCycle's proxy adds (X-Forwarded-For/Proto/Host, X-Request-Id both ways).
peer_port=$(free_port)
mkdir -p "$dir/peer/tmp"
cat > "$dir/peer/nginx.conf" <<EOF
worker_processes $(nproc);
daemon off;
pid $dir/peer/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/peer/tmp; proxy_temp_path $dir/peer/tmp; fastcgi_temp_path $dir/peer/tmp;
  uwsgi_temp_path $dir/peer/tmp; scgi_temp_path $dir/peer/tmp;
  upstream app { server 127.0.0.1:$upstream_port; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$peer_port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id always;
    }
  }
}
EOF
"$nginx_bin" -e stderr -p "$dir/peer" -c "$dir/peer/nginx.conf" 2>>"$dir/peer.log" &
peer_pid=$!
until curl -sf -o /dev/null "http://127.0.0.1:$peer_port/"; do sleep 0.01; done

# CPU time (user + system, clock ticks) so far of the proxy: BetCycle's proxy threads
# (`proxy-N`) for "ours", nginx's worker processes for "peer".
cpu_ticks() {
  python3 - "$1" "$pid" "$peer_pid" <<'PY'
import glob, sys
which, ours, peer = sys.argv[1:]
def ticks(stat):
    fields = open(stat).read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
if which == "ours":
    stats = [t + "/stat" for t in glob.glob(f"/proc/{ours}/task/*")
             if open(t + "/comm").read().startswith("proxy-")]
else:
    stats = [f"/proc/{c}/stat" for c in open(f"/proc/{peer}/task/{peer}/children").read().split()]
print(sum(ticks(s) for s in stats))
PY
}

# requests/s and p99 (ms) of `wrk` against $1; with $2 (ours, peer), also the proxy's
# CPU time per request in µs ($cpu).
load() {
  local before=0
  [ -n "${2:-}" ] && before=$(cpu_ticks "$2")
  wrk -t2 -c32 -d"${secs}s" --latency -H "Host: app.bench" "$1" > "$dir/wrk.out"
  cpu=
  if [ -n "${2:-}" ]; then
    cpu=$(python3 -c "import os, sys; t = int(sys.argv[2]) - int(sys.argv[1]); n = int(sys.argv[3])
print(f'{t / os.sysconf(\"SC_CLK_TCK\") / n * 1e6:.1f}')" "$before" "$(cpu_ticks "$2")" \
      "$(awk '/requests in/ { print $1 }' "$dir/wrk.out")")
  fi
  rps=$(awk '/^Requests\/sec/ { print $2 }' "$dir/wrk.out")
  p99=$(awk '$1 == "99%" { v = $2; u = v; gsub(/[0-9.]/, "", u); sub(/[a-z]+$/, "", v);
    if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.2f", v }' "$dir/wrk.out")
  bad=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$dir/wrk.out")
  echo "$1: $rps req/s, p99 $p99 ms, $bad failed${cpu:+, proxy CPU $cpu µs a request}" >&2
}
# ROUNDS rounds of nginx then BetCycle, each figure the median of its rounds (this
# machine is shared: alternating and taking medians keeps a slow moment from deciding).
median() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
load "http://127.0.0.1:$upstream_port/"; direct_rps=$rps
declare -a n_rps n_p99 n_cpu o_rps o_p99 o_cpu
for _ in $(seq "$rounds"); do
  load "http://127.0.0.1:$peer_port/" peer; n_rps+=("$rps"); n_p99+=("$p99"); n_cpu+=("$cpu")
  load "http://127.0.0.1:$proxy_port/" ours; o_rps+=("$rps"); o_p99+=("$p99"); o_cpu+=("$cpu")
done
nginx_rps=$(median "${n_rps[@]}"); nginx_p99=$(median "${n_p99[@]}"); nginx_cpu=$(median "${n_cpu[@]}")
ours_rps=$(median "${o_rps[@]}"); ours_p99=$(median "${o_p99[@]}"); ours_cpu=$(median "${o_cpu[@]}")
ratio() { python3 -c "print(f'{$1 / $2:.2f}' if $2 else 'n/a')"; }
row "proxy requests/s (wrk -c32, ${secs}s, median of $rounds)" "≥ 100 % of nginx's" "$ours_rps/s" "nginx $nginx_rps/s" "$(ratio "$ours_rps" "$nginx_rps")"
row "proxy p99 latency (same load)" "≤ 1.2× nginx's" "$ours_p99 ms" "nginx $nginx_p99 ms" "$(ratio "$ours_p99" "$nginx_p99")"
row "proxy CPU time per request (same load)" "(for reference)" "$ours_cpu µs" "nginx $nginx_cpu µs" "$(ratio "$ours_cpu" "$nginx_cpu")"
row "proxy requests/s vs no proxy" "(for reference)" "$ours_rps/s" "direct $direct_rps/s" "$(ratio "$ours_rps" "$direct_rps")"

# Blue-green switches under constant load: every non-2xx answer and socket error counts.
wrk -t1 -c8 -d600s -H "Host: app.bench" "http://127.0.0.1:$proxy_port/" > "$dir/switch.out" &
wrk_pid=$!
sleep 1
python3 - "$url" "$token" "$switches" <<'PY'
import sys, time
from benchkit import Api
api = Api(sys.argv[1], sys.argv[2])
for i in range(int(sys.argv[3])):
    d = api("POST", "/api/v1/projects/bench/deployments", {"environment": "bench", "release": 2 - i % 2})
    while d["status"] not in ("succeeded", "failed", "rolled_back"):
        time.sleep(0.05)
        d = api("GET", f"/api/v1/projects/bench/deployments/{d['number']}")
    assert d["status"] == "succeeded", d
PY
sleep 1
kill -INT "$wrk_pid"
wait "$wrk_pid" || true
total=$(awk '/requests in/ { print $1 }' "$dir/switch.out")
failed=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$dir/switch.out")
echo "switches: $failed failed of $total" >&2
row "failed requests in $switches blue-green switches under load" "0" "$failed" "$total requests" "$(ratio "$failed" "$total")"
bench_stop
pkill -f "$dir/" 2>/dev/null || true
