#!/usr/bin/env bash
# The saga engine's part of `./dev demo` (issue 8 §5), against a running stack (`./dev up`
# with baton-saga, the example participants and examples/sagas/checkout.yaml):
#   1. a checkout started with ?wait=5s answers 200 COMPLETED;
#   2. a payment refusal rolls back: the history shows ReleaseInventory after the failed
#      AuthorizePayment;
#   3. a shipment that never answers times out and rolls back, the timed-out step included;
#   4. an operator abort of a running saga (its shipment never answers) compensates at once;
#   5. kcat shows the commands on Kafka with their CloudEvents headers.
# The example participants obey rules in the saga's input (examples/participants):
# fail_at / never_answer_at name the step to refuse or to leave unanswered.
# Usage: examples/saga-demo.sh [ENV_FILE]   (default .run/env; the dev stack's env file)
# BATON_DEMO_TOKEN: the bearer token, when the services were started with BATON_API_TOKENS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
envfile=${1:-$ROOT/.run/env}
[[ -f "$envfile" ]] || { echo "no stack env file at $envfile: run ./dev up" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
source "$envfile"
set +a
saga=${BATON_SAGA_URL:?the stack runs no baton-saga (BATON_SAGA_URL unset)}
auth=()
[[ -n "${BATON_DEMO_TOKEN:-}" ]] && auth=(-H "Authorization: Bearer $BATON_DEMO_TOKEN")

step() {
  if [[ -t 1 ]]; then printf '\n\033[1m$ %s\033[0m\n' "$*"; else printf '\n$ %s\n' "$*"; fi
}
post() { curl -s "${auth[@]}" -X POST -H 'Content-Type: application/json' "$saga$1" -d "${2:-}"; }
get() { curl -s "${auth[@]}" "$saga$1"; }

# The history, one line per entry: what happened, to which step, and its detail.
history() {
  get "/v1/sagas/$1" | jq -r '"  state \(.state)", (.history[] |
    "  \(.at[11:23])  \(.what)\(if .step then " " + .step else "" end)\(if .kind then " (" + .kind + ")" else "" end)\(if .detail and .detail != "" then "  " + (.detail | tostring | .[0:90]) else "" end)")'
}

start() { # start <input json> <wait> -> prints the answer line, sets $id
  local out
  out=$(post "/v1/sagas/checkout?wait=$2" "$1")
  id=$(jq -r '.id // empty' <<<"$out")
  jq -c '{id, state, results}' <<<"$out"
  [[ -n "$id" ]] || { echo "  the saga was not started: $out" >&2; exit 1; }
}

step "POST /v1/sagas/checkout?wait=5s   {\"order\":\"o-1\",\"sku\":\"sku-42\",\"quantity\":2,\"amount\":4200}"
start '{"order":"o-1","sku":"sku-42","quantity":2,"amount":4200}' 5s
history "$id"

step "POST /v1/sagas/checkout?wait=5s   {\"order\":\"o-2\",\"fail_at\":\"authorize-payment\"}   (payment refused)"
start '{"order":"o-2","fail_at":"authorize-payment"}' 5s
history "$id"

step "POST /v1/sagas/checkout?wait=25s  {\"order\":\"o-3\",\"never_answer_at\":\"create-shipment\"}   (3 attempts time out after 5 s each)"
start '{"order":"o-3","never_answer_at":"create-shipment"}' 25s
history "$id"

step "POST /v1/sagas/checkout {\"order\":\"o-4\",\"never_answer_at\":\"create-shipment\"}, then POST /v1/sagas/{id}/abort"
start '{"order":"o-4","never_answer_at":"create-shipment"}' 1s
post "/v1/sagas/$id/abort" | jq -c '{id, state}'
get "/v1/sagas/$id?wait=5s" >/dev/null
history "$id"

step "kcat -C -t inventory.commands -o -2 -e   (the commands, with their CloudEvents headers)"
if command -v kcat >/dev/null; then
  kcat -C -b "$BATON_KAFKA_BROKERS" -t inventory.commands -p 0 -o -2 -e -q \
    -f '  partition %p offset %o key %k\n  headers %h\n  value %s\n' 2>/dev/null | cut -c1-200 ||
    echo "  (kcat could not read the topic)"
else
  echo "  (kcat is not installed: ./dev deps)"
fi

step "curl $saga/metrics | grep -E '^baton_saga_(sagas|started_total|compensations)'"
get /metrics | grep -E '^baton_saga_(sagas|started_total|compensations)' | head -n 12 || true
