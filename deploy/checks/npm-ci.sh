#!/usr/bin/env bash
# Installs deploy/checks' npm packages exactly as package-lock.json pins them, once per lock
# file version (a stamp in node_modules records which lock was installed).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$HERE"
want=$(sha256sum package-lock.json | cut -d' ' -f1)
[[ -f node_modules/.baton-lock && $(cat node_modules/.baton-lock) == "$want" ]] && exit 0
exec 9>"$HERE/.npm-ci.lock"
flock -w 300 9
[[ -f node_modules/.baton-lock && $(cat node_modules/.baton-lock) == "$want" ]] && exit 0
echo "deploy checks: npm ci in $HERE" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
echo "$want" >node_modules/.baton-lock
