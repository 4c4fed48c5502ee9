#!/usr/bin/env bash
# Log capture with secret masking: how many output lines per second `betcycle run` takes
# in, masks and passes on, for a step printing N lines
#   plain   — no secrets (nothing to mask),
#   secret  — given a secret that never appears (every line is scanned for the value and
#             its base64/base64url/URL-encoded forms),
#   masked  — given a secret that appears on every line (every line is rewritten),
# against the same lines through `sed` replacing the value (a peer doing one plain
# substitution), in the same run. Release build; output to /dev/null; medians of ROUNDS.
#   usage: bench/log-masking.sh [N] [ROUNDS]
. "$(dirname "$0")/lib.sh"
n=${1:-500000}
rounds=${2:-3}
bench_setup
secret="bench-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
for kind in plain secret masked; do
  mkdir -p "$dir/$kind"
  case $kind in
    plain) echo "steps: [{ name: out, run: 'seq $n' }]" ;;
    secret) echo "steps: [{ name: out, run: 'seq $n', secrets: [BENCH_SECRET] }]" ;;
    masked) echo "steps: [{ name: out, run: 'yes \"token=\$BENCH_SECRET\" | head -n $n', secrets: [BENCH_SECRET] }]" ;;
  esac > "$dir/$kind/.betcycle.yml"
done

BENCH_SECRET=$secret python3 - "$bin" "$dir" "$n" "$rounds" <<'PY'
import os, statistics, subprocess, sys, time
bin, d, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
secret = os.environ["BENCH_SECRET"]
def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t
def median(f):
    return statistics.median(f() for _ in range(rounds))
results = {}
for kind in ["plain", "secret", "masked"]:
    results[kind] = median(lambda: timed([bin, "run", "--dir", f"{d}/{kind}"]))
peer = median(lambda: timed(["sh", "-c", f'yes "token=$BENCH_SECRET" | head -n {n} | sed "s/$BENCH_SECRET/***/g"']))
print(f"{n} lines, median of {rounds} rounds")
for kind, t in results.items():
    print(f"betcycle run, {kind:6}: {t*1000:8.1f} ms  {n/t/1000:7.0f}k lines/s")
print(f"sed peer:              {peer*1000:8.1f} ms  {n/peer/1000:7.0f}k lines/s")
print(f"masking cost: secret/plain {results['secret']/results['plain']:.2f}, masked/plain {results['masked']/results['plain']:.2f}; masked/sed {results['masked']/peer:.2f}")
PY
