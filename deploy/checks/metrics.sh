#!/usr/bin/env bash
# Every baton_* metric that the alerts and the dashboard (deploy/k8s/base/monitoring) name
# must be one the services export: an alert on a metric no service has never fires, and
# nothing else would notice. Starts the dev stack with all services on free ports (./dev up
# in a run dir of its own), scrapes each service's /metrics, and fails naming every metric
# that no service exports. Names ending in "_" are prefixes of a regex and are skipped.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
run=$(mktemp -d /tmp/baton-metrics.XXXXXX)
cleanup() { BATON_DEV_RUN_DIR=$run "$ROOT/dev" down >/dev/null 2>&1 || true; rm -rf "$run"; }
trap cleanup EXIT
if ! BATON_DEV_RUN_DIR=$run BATON_DEV_AUTO_PORTS=1 "$ROOT/dev" up >"$run/up.log" 2>&1; then
  cat "$run/up.log" >&2
  echo "metrics check: ./dev up failed" >&2
  exit 1
fi
urls=$(sed -nE 's/^BATON_[A-Z]+_URL=(http.*)$/\1/p' "$run/env")
[[ -n "$urls" ]] || { echo "metrics check: no service URL in $run/env" >&2; exit 1; }
exported="$run/exported"
for u in $urls; do
  curl -sf "$u/metrics" || { echo "metrics check: $u/metrics did not answer" >&2; exit 1; }
done | sed -nE 's/^# TYPE ([a-z0-9_]+) .*/\1/p' | sort -u >"$exported"
named=$(grep -rhoE 'baton_[a-z0-9_]+' "$ROOT/deploy/k8s/base/monitoring" | grep -v '_$' | sort -u)
missing=0
for m in $named; do
  base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$m")
  if ! grep -qx -e "$m" -e "$base" "$exported"; then
    echo "metrics check: deploy/k8s/base/monitoring names $m, which no service exports" >&2
    missing=$((missing + 1))
  fi
done
echo "metrics check: $(wc -w <<<"$named") metric names checked against $(wc -l <"$exported") exported; $missing missing"
[[ $missing == 0 ]]
