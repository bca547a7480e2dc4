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
# shellcheck source=examples/demo-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo-env.sh"
saga=${BATON_SAGA_URL:?the stack runs no baton-saga (BATON_SAGA_URL unset)}
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

# Right after `./dev up` the consumer groups are still joining (devkafka answers a new
# group's first join after 3 s): wait until the engine and each participant hold partitions.
for url in "$saga" "${BATON_INVENTORY_URL:-}" "${BATON_PAYMENT_URL:-}" "${BATON_SHIPPING_URL:-}"; do
  [[ -n "$url" ]] || continue
  for _ in $(seq 1 150); do
    n=$(curl -s "$url/metrics" | awk '/^baton_kafka_consumer_assigned_partitions/ {s += $2} END {print s + 0}')
    [[ "$n" != 0 ]] && break
    sleep 0.2
  done
done

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
