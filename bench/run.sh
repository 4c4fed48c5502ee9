#!/usr/bin/env bash
# The benchmark harness: runs every row, each against its reference in the same run, and
# writes the results table (machine, command, target, measured, reference, ratio).
#   usage: bench/run.sh [--quick] [--out FILE]
#   full (default): the sizes of the performance targets; writes bench/results.md and
#     puts it into BENCHMARKS.md between the `bench:results` markers.
#   --quick: small sizes, a few seconds a row; writes only FILE (default a temporary one)
#     and fails unless every row produced a number. CI runs this; it asserts nothing
#     about speed.
. "$(dirname "$0")/lib.sh"
quick=false
out=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=true ;;
    --out) out=$2; shift ;;
    *) echo "usage: bench/run.sh [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
if $quick; then
  out=${out:-$(mktemp)}
  plan=(
    "bench/step-overhead.sh 50 2"
    "bench/webhook-latency.sh 5"
    "bench/writes.sh 2"
    "bench/log-throughput.sh 100000 1"
    "bench/policy-eval.sh 2000 1"
    "bench/store-scale.sh 2000"
    "bench/memory.sh 200"
    "bench/proxy.sh 2 3 1"
    "bench/container-overhead.sh 3 1"
    "bench/agent-dispatch.sh 3"
    "bench/probes.sh 20 3"
  )
  expected=24
else
  out=${out:-bench/results.md}
  plan=(
    "bench/step-overhead.sh 200 5"
    "bench/webhook-latency.sh 100"
    "bench/writes.sh 10"
    "bench/log-throughput.sh 1000000 5"
    "bench/policy-eval.sh 100000 3"
    "bench/store-scale.sh 100000 1000000"
    "bench/memory.sh 10000"
    "bench/proxy.sh 10 20"
    "bench/container-overhead.sh 20 3"
    "bench/agent-dispatch.sh 30"
    "bench/probes.sh 1000 60"
  )
  expected=30
fi
betcycle_bin >/dev/null   # build once, before anything is timed
# Read before the results file (tracked) is written below.
dirty=$(git diff --quiet || echo ' (with local changes)')

rows=$(mktemp)
for command in "${plan[@]}"; do
  echo "== $command" >&2
  # shellcheck disable=SC2086
  bash $command | awk -F'\t' -v c="$command" '
    { print > "/dev/stderr"; fflush("/dev/stderr") }
    $1 == "ROW" { print $0 "\t" c }' >> "$rows"
done

{
  echo "Measured $(date -u +%Y-%m-%d) on commit $(git rev-parse --short HEAD)$dirty by \`bench/run.sh$($quick && echo ' --quick')\`;"
  echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r), $(df -T . | awk 'NR == 2 { print $2 }') disk."
  echo
  echo "| what | target | measured | reference (same run) | ratio | command |"
  echo "|---|---|---|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | `%s` |\n", $2, $3, $4, $5, $6, $7 }' "$rows"
} > "$out"
cat "$out"

count=$(wc -l < "$rows")
missing=$(awk -F'\t' '$4 !~ /[0-9]/ || $6 !~ /[0-9]/' "$rows")
rm -f "$rows"
if [ "$count" -ne "$expected" ] || [ -n "$missing" ]; then
  echo "bench: $count of $expected rows, or a row without a number: $missing" >&2
  exit 1
fi
if ! $quick; then
  python3 - "$out" <<'PY'
import pathlib, sys
table = pathlib.Path(sys.argv[1]).read_text()
doc = pathlib.Path("BENCHMARKS.md")
text = doc.read_text()
begin, end = "<!-- bench:results -->\n", "<!-- /bench:results -->"
head, rest = text.split(begin, 1)
doc.write_text(head + begin + table + rest[rest.index(end):])
PY
  echo "BENCHMARKS.md updated from $out" >&2
fi
