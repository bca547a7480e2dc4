#!/usr/bin/env bash
# The projector's part of `./dev demo` (issue 9 §4), against a running stack (`./dev up` with
# baton-broker and baton-projector, BATON_PROJECTIONS=examples/projections):
#   1. billing-generator feeds legacy billing traffic (protobuf) into legacy.billing.invoices;
#      a customer's unpaid invoices and balance change on the read API as events arrive.
#   2. Read-your-writes through the broker: an invoice is published as a CloudEvent, and the
#      publish answer's partition and offset make the projector's read wait for exactly that
#      event (?after=legacy.billing.events:<partition>:<offset>).
# Usage: examples/projector-demo.sh [ENV_FILE]   (default .run/env; the dev stack's env file)
# BATON_DEMO_TOKEN: the bearer token, when the services were started with BATON_API_TOKENS.
set -euo pipefail
# shellcheck source=examples/demo-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo-env.sh"
proj=${BATON_PROJECTOR_URL:?the stack runs no baton-projector (BATON_PROJECTOR_URL unset)}
broker=${BATON_BROKER_URL:?the stack runs no baton-broker (BATON_BROKER_URL unset)}
gen=${BATON_BUILD_DIR:-$ROOT/build}/examples/billing-generator/billing-generator
[[ -x "$gen" ]] || { echo "billing-generator is not built ($gen): run ./dev build" >&2; exit 1; }
get() { curl -s "${auth[@]}" "$proj$1"; }

# One line per look: the balance, the open count and the first unpaid invoices by due date.
show_customer() {
  local c=$1 bal open list
  bal=$(get "/v1/projections/invoices/aggregates/balance/$c" | jq -r '.value // "-"')
  open=$(get "/v1/projections/invoices/aggregates/open_invoices/$c" | jq -r '.value // "-"')
  list=$(get "/v1/projections/invoices?index=unpaid_by_due&value=$c&limit=4" |
    jq -r '[.items[]? | "\(.key) (\(.doc.amount_cents) due \(.doc.due_date))"] | join(", ")')
  printf '  %s  balance %8s cents  open %3s  unpaid: %s\n' "$c" "$bal" "$open" "${list:-none}"
}

run=$(date +%s)
cust=cust-000003

step "billing-generator --customers 20 --events 600 --rate 100 --brokers ... (legacy billing traffic, protobuf)"
# Fresh invoice numbers on every run, so a second demo adds invoices instead of replaying.
"$gen" --customers 20 --events 600 --rate 100 --seed "$run" --first-invoice $(((run % 100000) * 10000 + 1)) \
  --brokers "$BATON_KAFKA_BROKERS" --oracle "/tmp/projector-demo-$run.json" &
genpid=$!
step "GET /v1/projections/invoices?index=unpaid_by_due&value=$cust  and its balance, every second"
for _ in 1 2 3 4 5 6 7; do
  show_customer "$cust"
  sleep 1
done
wait "$genpid" || echo "  (the generator failed; see above)"
sleep 1
show_customer "$cust"
step "GET /v1/projections/invoices/aggregates/balance/$cust   (the whole answer: the offsets it reflects come with it)"
get "/v1/projections/invoices/aggregates/balance/$cust" | jq -c .

step "read-your-writes: publish InvoiceIssued through the broker, then read it with ?after="
inv="inv-demo-$run"
ans=$(curl -s "$broker/v1/topics/legacy.billing.events/events" "${auth[@]}" \
  -H 'ce-specversion: 1.0' -H "ce-id: $inv-issued" -H 'ce-source: /demo/billing' \
  -H 'ce-type: InvoiceIssued' -H "ce-partitionkey: $inv" -H 'Content-Type: application/json' \
  -d "{\"invoice_id\":\"$inv\",\"customer_id\":\"cust-demo\",\"amount_cents\":4200,\"due_date\":\"2030-01-31\"}")
echo "  broker: $ans"
p=$(jq -r '.results[0].partition' <<<"$ans")
o=$(jq -r '.results[0].offset' <<<"$ans")
step "GET /v1/projections/invoices_ce/$inv?after=legacy.billing.events:$p:$o&wait=5s"
curl -s "${auth[@]}" -w '  (HTTP %{http_code} in %{time_total} s)\n' \
  "$proj/v1/projections/invoices_ce/$inv?after=legacy.billing.events:$p:$o&wait=5s"

step "pay it through the broker; the balance read with ?after= already excludes it"
ans=$(curl -s "$broker/v1/topics/legacy.billing.events/events" "${auth[@]}" \
  -H 'ce-specversion: 1.0' -H "ce-id: $inv-paid" -H 'ce-source: /demo/billing' \
  -H 'ce-type: PaymentReceived' -H "ce-partitionkey: $inv" -H 'Content-Type: application/json' \
  -d "{\"invoice_id\":\"$inv\",\"paid_at\":\"$(date -u +%FT%TZ)\"}")
p=$(jq -r '.results[0].partition' <<<"$ans")
o=$(jq -r '.results[0].offset' <<<"$ans")
curl -s "${auth[@]}" -w '  (HTTP %{http_code} in %{time_total} s)\n' \
  "$proj/v1/projections/invoices_ce/aggregates/open_invoices/cust-demo?after=legacy.billing.events:$p:$o&wait=5s"
step "an offset not yet applied: the read waits ?wait=, then answers 504 with the current position"
curl -s "${auth[@]}" -w '  (HTTP %{http_code} in %{time_total} s)\n' \
  "$proj/v1/projections/invoices_ce/$inv?after=legacy.billing.events:$p:$((o + 1000000))&wait=500ms"
