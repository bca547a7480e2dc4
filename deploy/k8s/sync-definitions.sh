#!/usr/bin/env bash
# Copies examples/sagas and examples/projections into base/definitions/, where kustomize's
# configMapGenerator can load them (it loads no file from outside the kustomization root).
# `sync-definitions.sh --check` only compares, and fails on any difference (the ctest check).
# A new definition file also needs its line under configMapGenerator in base/kustomization.yaml.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
check=0
[[ ${1:-} == --check ]] && check=1
rc=0
for kind in sagas projections; do
  src="$ROOT/examples/$kind" dst="$HERE/base/definitions/$kind"
  if [[ $check == 1 ]]; then
    diff -r "$src" "$dst" || { echo "definitions: $dst differs from $src (run deploy/k8s/sync-definitions.sh)" >&2; rc=1; }
    for f in "$src"/*.yaml "$src"/*.yml; do
      [[ -f $f ]] || continue
      grep -qF "definitions/$kind/$(basename "$f")" "$HERE/base/kustomization.yaml" ||
        { echo "definitions: $kind/$(basename "$f") is not in base/kustomization.yaml's configMapGenerator" >&2; rc=1; }
    done
  else
    rm -rf "$dst" && mkdir -p "$dst" && cp "$src"/*.y*ml "$dst"/
  fi
done
exit $rc
