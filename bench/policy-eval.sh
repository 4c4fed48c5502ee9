#!/usr/bin/env bash
# Deploy-gate policy evaluations per second on one core: the starter policies (every
# deploy rule, production-like input) evaluated N times in one process by
# `betcycle policy eval --repeat N`, pinned to CPU 0. Peer, in the same run: the same
# engine and input with a single trivial rule — the floor of one regorus evaluation.
#   usage: bench/policy-eval.sh [N] [ROUNDS]
. "$(dirname "$0")/lib.sh"
n=${1:-100000}
rounds=${2:-3}
bench_setup
input=$PWD/bench/fixtures/deploy-input.json
printf 'package betcycle.deploy\nimport rego.v1\ndeny contains "never" if input.never\n' > "$dir/trivial.rego"
pin() { if command -v taskset > /dev/null; then taskset -c 0 "$@"; else "$@"; fi; }
rate() { # prints evaluations per second
  pin "$bin" policy eval --gate deploy --input "$input" --repeat "$n" "$@" 2>&1 >/dev/null |
    sed -n 's/.*: \([0-9]*\) per second/\1/p'
}
best() { local top=0 r; for _ in $(seq "$rounds"); do r=$(rate "$@"); [ "$r" -gt "$top" ] && top=$r; done; echo "$top"; }
starter=$(best)
trivial=$(best --policy "$dir")
echo "$n deploy-gate evaluations per round, best of $rounds, one core"
echo "starter policies: $starter per second"
echo "trivial policy:   $trivial per second"
awk -v s="$starter" -v t="$trivial" 'BEGIN { printf "ratio starter/trivial: %.2f\n", s / t }'
row "deploy-gate evaluations, starter policies, one core" "≥ 50,000/s" "$starter/s" \
  "one trivial rule: $trivial/s" "$(awk -v s="$starter" -v t="$trivial" 'BEGIN { printf "%.2f", s / t }')"
