# Sourced by the bench scripts (run from the repository root).

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
