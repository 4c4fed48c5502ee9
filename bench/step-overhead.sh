#!/usr/bin/env bash
# Per-step overhead of the executor beyond the command itself, compared in the same run
# with spawning `sh -c true` directly. A pipeline of N sequential `true` steps is run
# with `betcycle run --jobs 1` (release build); the same N commands are spawned from a
# small Python loop (no shell-loop overhead of its own). Overhead per step =
# (betcycle time - direct time) / N; it includes betcycle's own start-up, spread over N.
#   usage: bench/step-overhead.sh [N] [ROUNDS]
. "$(dirname "$0")/lib.sh"
n=${1:-200}
rounds=${2:-5}
bench_setup
sequential_steps "$n" > "$dir/.betcycle.yml"

python3 - "$bin" "$dir" "$n" "$rounds" <<'PY'
import statistics, subprocess, sys, time
bin, d, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def betcycle():
    t = time.perf_counter()
    subprocess.run([bin, "run", "--dir", d, "--jobs", "1"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t
def direct():
    t = time.perf_counter()
    for _ in range(n):
        subprocess.run(["sh", "-c", "true"], check=True)
    return time.perf_counter() - t
b = statistics.median(betcycle() for _ in range(rounds))
s = statistics.median(direct() for _ in range(rounds))
print(f"{n} sequential steps, median of {rounds} rounds")
print(f"betcycle run: {b*1000:.1f} ms total, {b/n*1000:.2f} ms per step")
print(f"sh -c true:   {s*1000:.1f} ms total, {s/n*1000:.2f} ms per spawn")
print(f"overhead per step beyond the command: {(b-s)/n*1000:.2f} ms (ratio betcycle/sh -c: {b/s:.2f})")
print(f"ROW\tper-step overhead beyond the command ({n} steps, betcycle run)\t≤ 0.5 ms\t{(b-s)/n*1000:.2f} ms\t"
      f"sh -c true: {s/n*1000:.2f} ms per spawn\t{b/s:.2f}")
PY
