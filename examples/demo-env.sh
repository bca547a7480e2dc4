# Sourced by the demo scripts (examples/*-demo.sh): loads the dev stack's env file ($1, or
# .run/env) into the environment, and defines `auth` (curl's bearer-token arguments from
# BATON_DEMO_TOKEN) and `step` (prints a demo step as a shell prompt line).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
envfile=${1:-$ROOT/.run/env}
[[ -f "$envfile" ]] || { echo "no stack env file at $envfile: run ./dev up" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
source "$envfile"
set +a
auth=()
[[ -n "${BATON_DEMO_TOKEN:-}" ]] && auth=(-H "Authorization: Bearer $BATON_DEMO_TOKEN")

step() {
  if [[ -t 1 ]]; then printf '\n\033[1m$ %s\033[0m\n' "$*"; else printf '\n$ %s\n' "$*"; fi
}
