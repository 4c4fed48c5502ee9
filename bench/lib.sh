# Sourced first by every bench script: strict mode, the repository root as the working
# directory, and the helpers below.
set -euo pipefail
cd "$(dirname "$0")/.."
# The scripts' Python parts import bench/benchkit.py.
export PYTHONPATH="$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"

# The binary to measure: $BETCYCLE_BIN when set (another build, e.g. the static musl one),
# else the release build, made if missing.
betcycle_bin() {
  if [ -n "${BETCYCLE_BIN:-}" ]; then
    realpath "$BETCYCLE_BIN"
  else
    [ -x target/release/betcycle ] || cargo build --release >&2
    echo "$PWD/target/release/betcycle"
  fi
}

# Sets $bin and $dir (a temporary directory removed at exit, after any server or other
# background job of the script is stopped).
bench_setup() {
  bin=$(betcycle_bin)
  dir=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# An administrator `bench` in $dir/data; its admin token in $token.
bench_admin() {
  echo "bench password 123" | "$bin" user add bench --admin --password-stdin --data-dir "$dir/data" >/dev/null
  token=$("$bin" token create --user bench --scope admin --data-dir "$dir/data")
}

# Starts `serve` on $dir/data in the background ($pid) at $port (a free one unless set;
# $url is its base URL), with extra arguments; returns once /readyz answers 200. Server
# warnings go to $dir/server.log.
bench_serve() {
  port=${port:-$(free_port)}
  url=http://127.0.0.1:$port
  BETCYCLE_LOG_LEVEL=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" \
    --log-format json "$@" 2>>"$dir/server.log" &
  pid=$!
  wait_ready
}
wait_ready() { until curl -sf -o /dev/null "$url/readyz"; do sleep 0.001; done; }
bench_stop() { kill -TERM "$pid"; wait "$pid" || true; }

# A git repository in $dir/repo on `main` whose first commit holds the pipeline read from
# standard input as .betcycle.yml.
bench_repo() {
  export GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@example.com GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@example.com
  mkdir "$dir/repo"
  git -C "$dir/repo" init -q -b main
  cat > "$dir/repo/.betcycle.yml"
  echo start > "$dir/repo/f.txt"
  git -C "$dir/repo" add -A && git -C "$dir/repo" commit -qm init
}

# A pipeline of N sequential `true` steps.
sequential_steps() {
  echo "steps:"
  echo "  - { name: s0, run: 'true' }"
  for i in $(seq 1 $(($1 - 1))); do
    echo "  - { name: s$i, run: 'true', depends_on: [s$((i - 1))] }"
  done
}

# A result row for bench/run.sh: what, target, measured, reference (in the same run),
# ratio (measured over reference).
row() { printf 'ROW\t%s\t%s\t%s\t%s\t%s\n' "$@"; }
