#!/usr/bin/env bash
# The scratch image, for real, on this machine's Docker Engine: builds packaging/Dockerfile
# (`--target betcycle`, no registry needed) from the static binary, records its size,
# runs it on a named volume, waits for its HEALTHCHECK to say healthy, writes records
# through the API, stops it with `docker stop` (graceful: exit code 0) and starts it again
# on the same volume, where every record must still be. packaging/check.sh calls it after
# building the binary; alone: `bash packaging/image-check.sh [BINARY]`.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/x86_64-unknown-linux-musl/release/betcycle}
[ -x "$binary" ] || { echo "no static binary at $binary (cargo build --release --target x86_64-unknown-linux-musl)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the image check needs a running Docker Engine" >&2; exit 1; }

tag=betcycle-image-check:$$
volume=betcycle-image-check-$$
name=betcycle-image-check-$$
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker volume rm "$volume" >/dev/null 2>&1 || true
  docker image rm "$tag" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "--- docker build --target betcycle (FROM scratch)"
# The build context: only what the Dockerfile copies.
context=$(mktemp -d)
trap 'cleanup; rm -rf "$context"' EXIT
mkdir -p "$context/packaging"
cp "$binary" "$context/betcycle"
cp -r packaging/data-dir "$context/packaging/"
docker build -q --target betcycle -f packaging/Dockerfile --build-arg BINARY=betcycle \
  -t "$tag" "$context" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "image size: $size bytes ($((size / 1024 / 1024)) MiB); the binary: $(stat -c %s "$binary") bytes"

echo "--- an administrator and a token, on the volume, before the server starts"
echo "image check password 1" | docker run --rm -i -v "$volume:/data" "$tag" \
  user add admin --admin --password-stdin >/dev/null
token=$(docker run --rm -v "$volume:/data" "$tag" token create --user admin --scope admin)

healthy() {
  for _ in $(seq 1 120); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$name")
    [ "$status" = healthy ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || { docker logs "$name" >&2; return 1; }
    sleep 1
  done
  echo "the container never became healthy (last: $status)" >&2
  docker logs "$name" >&2
  return 1
}
api() {
  local port
  port=$(docker port "$name" 8080/tcp | head -1 | sed 's/.*://')
  curl -sS -f -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    "$@" "http://127.0.0.1:$port$path"
}

echo "--- docker run: healthy by its own HEALTHCHECK"
docker run -d --init --name "$name" -v "$volume:/data" -p 127.0.0.1::8080 "$tag" >/dev/null
healthy
echo "healthy after $(($(date +%s) - $(date -d "$(docker inspect -f '{{.State.StartedAt}}' "$name")" +%s))) s"

echo "--- records through the API"
path=/api/v1/secrets/IMAGE_CHECK api -X PUT -d '{"value":"kept across restarts"}' >/dev/null
path=/api/v1/teams api -X POST -d '{"name":"platform"}' >/dev/null
path=/api/v1/secrets api | grep -q IMAGE_CHECK
path=/api/v1/teams api | grep -q platform

echo "--- docker stop: graceful"
docker stop -t 30 "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { echo "docker stop: exit code $code" >&2; docker logs "$name" >&2; exit 1; }
docker logs "$name" 2>&1 | grep -q '"message":"stopped"' || { docker logs "$name" >&2; exit 1; }

echo "--- docker start on the same volume: every record kept"
docker start "$name" >/dev/null
healthy
path=/api/v1/secrets api | grep -q IMAGE_CHECK
path=/api/v1/teams api | grep -q platform
path=/api/v1/audit api | grep -q IMAGE_CHECK
echo "--- the scratch image passed: built, healthy, stopped with exit 0, restarted with its records"
