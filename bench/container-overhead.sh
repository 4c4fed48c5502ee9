#!/usr/bin/env bash
# Container step overhead: N sequential steps `true` in a busybox image (built here
# `FROM scratch` from Debian's static busybox, as the tests do), run with
# `betcycle run --jobs 1`, against `docker run --rm` of the same image and command N
# times (the Docker CLI, one container each), in the same run. Both create, start, wait
# for and remove one container per step; BetCycle also follows its output through the
# engine API and makes one network for the run.
#   usage: bench/container-overhead.sh [N] [ROUNDS]
. "$(dirname "$0")/lib.sh"
n=${1:-20}
rounds=${2:-3}
docker info >/dev/null 2>&1 || { echo "bench/container-overhead.sh needs a running Docker Engine" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "bench/container-overhead.sh needs busybox-static (apt-get install busybox-static)" >&2; exit 1; }
bench_setup
image=betcycle-bench-busybox:1
if ! docker image inspect "$image" >/dev/null 2>&1; then
  mkdir -p "$dir/image"
  cp /bin/busybox "$dir/image/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' > "$dir/image/Dockerfile"
  docker build -q -t "$image" "$dir/image" >/dev/null
fi
{ echo "image: $image"; sequential_steps "$n"; } > "$dir/.betcycle.yml"

python3 - "$bin" "$dir" "$n" "$rounds" "$image" <<'PY'
import statistics, subprocess, sys, time
bin, d, n, rounds, image = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def betcycle():
    t = time.perf_counter()
    subprocess.run([bin, "run", "--dir", d, "--jobs", "1"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t
def docker():
    t = time.perf_counter()
    for _ in range(n):
        subprocess.run(["docker", "run", "--rm", image, "sh", "-c", "true"], check=True,
                       stdout=subprocess.DEVNULL)
    return time.perf_counter() - t
b, s = [], []
for _ in range(rounds):  # alternated, so drift hits both
    b.append(betcycle())
    s.append(docker())
b, s = statistics.median(b), statistics.median(s)
print(f"{n} sequential container steps, median of {rounds} rounds")
print(f"betcycle run:  {b*1000:.0f} ms total, {b/n*1000:.1f} ms per step")
print(f"docker run --rm: {s*1000:.0f} ms total, {s/n*1000:.1f} ms per container")
print(f"ROW\tcontainer step, create to removed ({n} steps, betcycle run)\t≤ 1.2× docker run --rm\t{b/n*1000:.1f} ms per step\t"
      f"docker run --rm: {s/n*1000:.1f} ms\t{b/s:.2f}")
PY
