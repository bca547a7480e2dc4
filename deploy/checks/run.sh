#!/usr/bin/env bash
# deploy/checks/run.sh: the offline checks of deploy/ (ctest: deploy_manifests).
#   1. yamllint on every YAML file under deploy/ (settings: deploy/.yamllint.yaml); every
#      JSON file under deploy/k8s (the Grafana dashboard) parses
#   2. the k8s copies of the example definitions equal examples/ (sync-definitions.sh --check)
#   3. `kubectl kustomize` of every overlay
#   4. validate.mjs: every built object against kubernetes-models or its operator's CRD
#   5. policy.mjs: probes, limits, non-root, read-only root FS, PDB, NetworkPolicy, image tags,
#      grace period vs BATON_SHUTDOWN_TIMEOUT, topics; prod and canary: replicas >= 2 and
#      anti-affinity
# All steps run; the script fails when any failed, naming it.
#   run.sh [--only STEP[,STEP...]] [--overlays NAME[,NAME...]] [DIR]
# DIR: check the tree rooted there instead of this repository (the negative self-test runs it
# on broken copies). --only: yamllint, json, definitions, validate, policy (kustomize always
# runs). --overlays: build and check only these overlays (default: dev, prod, canary).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ONLY=all
OVERLAYS=(dev prod canary)
while [[ ${1:-} == --* ]]; do
  case $1 in
    --only) ONLY=",$2,"; shift 2 ;;
    --overlays) IFS=, read -r -a OVERLAYS <<<"$2"; shift 2 ;;
    *) echo "usage: run.sh [--only STEP,...] [--overlays dev,prod,canary] [DIR]" >&2; exit 2 ;;
  esac
done
TREE=$(cd "${1:-$HERE/../..}" && pwd -P)
DEPLOY=$TREE/deploy

die() { printf 'deploy checks: error: %s\n' "$*" >&2; exit 2; }
for t in yamllint node npm; do
  command -v "$t" >/dev/null || die "$t not found: run ./dev deps (it installs yamllint, nodejs, npm)"
done
command -v kubectl >/dev/null ||
  die "kubectl not found: the manifest checks need kubectl >= 1.27 with kustomize built in (https://kubernetes.io/docs/tasks/tools/); it is not a Debian package"
kubectl kustomize --help >/dev/null 2>&1 || die "this kubectl has no 'kustomize' subcommand: install kubectl >= 1.14"

# The validators' npm packages, pinned by package-lock.json, installed next to the scripts
# (node_modules is ignored by git). Reinstalled only when the lock file changes.
"$HERE/npm-ci.sh" || die "npm ci in $HERE failed (see above)"

OUT=$(mktemp -d /tmp/baton-deploy-checks.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
failed=()
step() { # name command...
  local name=$1; shift
  if [[ $ONLY != all && $ONLY != *",${name%% *},"* && $name != kustomize* ]]; then return 0; fi
  printf -- '--- %s\n' "$name"
  if "$@"; then printf -- '--- %s: ok\n' "$name"; else printf -- '--- %s: FAILED\n' "$name"; failed+=("$name"); fi
}

step yamllint bash -c 'cd "$1" && yamllint -f parsable -c .yamllint.yaml . ' _ "$DEPLOY"
step json bash -c 'find "$1" -name "*.json" -print0 | xargs -0 -r -n1 node -e "JSON.parse(require(\"fs\").readFileSync(process.argv[1], \"utf8\"))"' _ "$DEPLOY/k8s"
step definitions "$DEPLOY/k8s/sync-definitions.sh" --check
built=()
for o in "${OVERLAYS[@]}"; do
  mkdir -p "$OUT/$o"
  if step "kustomize $o" bash -c 'kubectl kustomize "$1" >"$2"' _ "$DEPLOY/k8s/overlays/$o" "$OUT/$o/objects.yaml"; then
    built+=("$o")
  fi
done
files=(); for o in "${built[@]}"; do files+=("$OUT/$o/objects.yaml"); done
if [[ ${#files[@]} -gt 0 ]]; then
  step validate node "$HERE/validate.mjs" "${files[@]}"
  pol=(); for o in "${built[@]}"; do [[ $o == dev ]] && pol+=("$OUT/$o/objects.yaml"); done
  [[ ${#pol[@]} -gt 0 ]] && step "policy dev" node "$HERE/policy.mjs" "${pol[@]}"
  pol=(); for o in "${built[@]}"; do [[ $o != dev ]] && pol+=("$OUT/$o/objects.yaml"); done
  [[ ${#pol[@]} -gt 0 ]] && step "policy prod+canary" node "$HERE/policy.mjs" --min-replicas 2 --anti-affinity "${pol[@]}"
fi

if [[ ${#failed[@]} -gt 0 ]]; then
  printf 'deploy checks: FAILED: %s\n' "${failed[*]}" >&2
  exit 1
fi
echo "deploy checks: all passed (${OVERLAYS[*]})"
