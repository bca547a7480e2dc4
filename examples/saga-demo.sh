#!/usr/bin/env bash
# The saga engine's part of `./dev demo` (issue 8 §5), against a running stack (`./dev up`
# with baton-saga, the example participants and examples/sagas/checkout.yaml):
#   1. a checkout started with ?wait=5s answers 200 COMPLETED;
#   2. a payment refusal rolls back: the history shows ReleaseInventory after the failed
#      AuthorizePayment;
#   3. a shipment that never answers times out and rolls back, the timed-out step included;
#   4. an operator abort of a running saga (its shipment never answers) compensates at once;
#   5. an operator retry of a FAILED saga: its inventory release is refused until a time T, so
#      the compensation's attempts run out (FAILED); after T, POST /v1/sagas/{id}/retry
#      compensates it;
#   6. kcat shows the commands on Kafka with their CloudEvents headers.
# The example participants obey rules in the saga's input (examples/participants):
# fail_at / never_answer_at name the step to refuse or to leave unanswered,
# fail_compensation_at the step whose compensation to refuse, and fail_compensation_until
# (Unix seconds) until when.
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

# The saga's state, polled until it is $2 or $3 seconds have passed; exits when it is not.
wait_state() {
  local s=""
  for _ in $(seq 1 $(($3 * 5))); do
    s=$(get "/v1/sagas/$1" | jq -r .state)
    [[ "$s" == "$2" ]] && return 0
    sleep 0.2
  done
  echo "  the saga is $s, not $2" >&2
  exit 1
}

# checkout.yaml retries a compensation 5 times, backing off 200 ms doubling (about 3 s in
# all): a release refused for 8 s leaves the saga FAILED well before the participant gives in.
until=$(($(date +%s) + 8))
in5="{\"order\":\"o-5\",\"fail_at\":\"authorize-payment\",\"fail_compensation_at\":\"reserve-inventory\",\"fail_compensation_until\":$until}"
step "POST /v1/sagas/checkout $in5   (payment refused; the inventory release refused until $(date -u -d "@$until" +%T))"
start "$in5" 1s
wait_state "$id" FAILED 8
history "$id"
echo "  (waiting until $(date -u -d "@$until" +%T) for the participant to accept the release)"
while (($(date +%s) <= until)); do sleep 0.2; done
step "POST /v1/sagas/$id/retry   (operator retry: a new round of compensation attempts)"
post "/v1/sagas/$id/retry" | jq -c '{id, state}'
wait_state "$id" COMPENSATED 10
history "$id"

step "kcat -C -t inventory.commands -o -2 -e   (the commands, with their CloudEvents headers)"
if command -v kcat >/dev/null; then
  # The last two records of every partition (a saga's commands go to the partition of its id),
  # of which the last two printed.
  out=$(kcat -C -b "$BATON_KAFKA_BROKERS" -t inventory.commands -o -2 -e -q \
    -f '  partition %p offset %o key %k\n  headers %h\n  value %s\n' 2>/dev/null) ||
    out=""
  if [[ -n "$out" ]]; then tail -n 6 <<<"$out" | cut -c1-200; else echo "  (kcat read no record)"; exit 1; fi
else
  echo "  (kcat is not installed: ./dev deps)"
fi

step "curl $saga/metrics | grep -E '^baton_saga_(sagas|started_total|compensations)'"
get /metrics | grep -E '^baton_saga_(sagas|started_total|compensations)' | head -n 12 || true
