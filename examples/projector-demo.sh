#!/usr/bin/env bash
# The projector's part of `./dev demo` (issue 9 §4), against a running stack (`./dev up` with
# baton-broker and baton-projector, BATON_PROJECTIONS=examples/projections):
#   1. billing-generator feeds legacy billing traffic (protobuf) into legacy.billing.invoices;
#      a customer's unpaid invoices and balance change on the read API as events arrive.
#   2. Read-your-writes through the broker: an invoice is published as a CloudEvent, and the
#      publish answer's partition and offset make the projector's read wait for exactly that
#      event (?after=legacy.billing.events:<partition>:<offset>).
#   3. Poison: a record that is not a CloudEvent, produced with kcat, lands on the dead-letter
#      topic with its coordinates in headers (and in baton_projector_dead_letters_total) while
#      a good record produced after it is applied.
#   4. Rebuild: POST /v1/projections/invoices_ce/rebuild builds version n+1 beside n; reads
#      answer throughout, the version goes n -> n+1 and the document is the same. Exits 1 when
#      it does not switch within 12 s or the document differs.
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

step "poison: kcat -P -t legacy.billing.events -p 0   (a record that is not a CloudEvent), then a good one"
dlq=${BATON_PROJECTOR_DLQ_TOPIC:-projector.dlq}
dl_before=$(curl -s "$proj/metrics" | awk '/^baton_projector_dead_letters_total/ {print $2}')
printf 'this is not JSON\n' | kcat -P -b "$BATON_KAFKA_BROKERS" -t legacy.billing.events -p 0 -k "poison-$run"
good="inv-after-poison-$run"
printf '{"specversion":"1.0","id":"%s","source":"/demo/kcat","type":"InvoiceIssued","data":{"invoice_id":"%s","customer_id":"cust-demo","amount_cents":700,"due_date":"2030-02-28"}}\n' \
  "$good" "$good" | kcat -P -b "$BATON_KAFKA_BROKERS" -t legacy.billing.events -p 0 -k "$good"
# The good record is the newest of partition 0: its offset is what ?after= waits for.
go=$(kcat -C -b "$BATON_KAFKA_BROKERS" -t legacy.billing.events -p 0 -o -1 -c 1 -e -q -f '%o\n')
step "GET /v1/projections/invoices_ce/$good?after=legacy.billing.events:0:$go&wait=5s   (applied past the poison)"
curl -s "${auth[@]}" -w '  (HTTP %{http_code} in %{time_total} s)\n' \
  "$proj/v1/projections/invoices_ce/$good?after=legacy.billing.events:0:$go&wait=5s"
step "kcat -C -t $dlq -o -1 -c 1   (the dead letter: class, error and its coordinates in headers)"
kcat -C -b "$BATON_KAFKA_BROKERS" -t "$dlq" -o -1 -c 1 -e -q \
  -f '  key %k  value %s\n  headers %h\n'
dl_after=$(curl -s "$proj/metrics" | awk '/^baton_projector_dead_letters_total/ {print $2}')
echo "  baton_projector_dead_letters_total: ${dl_before:-0} -> ${dl_after:-0}"

step "POST /v1/projections/invoices_ce/rebuild   (version n+1 beside n; reads go on throughout)"
doc() { get "/v1/projections/invoices_ce/$good" | jq -cS '.doc'; }
before=$(doc)
v0=$(get "/v1/projections/invoices_ce/$good" | jq -r '.version')
ans=$(curl -s "${auth[@]}" -X POST -w '\n%{http_code}' "$proj/v1/projections/invoices_ce/rebuild")
echo "  ${ans%$'\n'*}  (HTTP ${ans##*$'\n'})"
if [[ ${ans##*$'\n'} == 409 ]]; then
  # A demo run less than BATON_PROJECTOR_REBUILD_GRACE (60 s) ago left its old version in
  # its grace period; the slot takes a new rebuild once that version is dropped.
  echo "  (an earlier rebuild is still in its grace period; run the demo again in a minute)"
  exit 0
fi
v=$v0 reads=0 failed=0 deadline=$((SECONDS + 12))
while ((SECONDS < deadline)); do # the switch comes once n+1 caught up
  ans=$(curl -s "${auth[@]}" -w '\n%{http_code}' "$proj/v1/projections/invoices_ce/$good")
  reads=$((reads + 1))
  [[ ${ans##*$'\n'} == 200 ]] || failed=$((failed + 1))
  v=$(jq -r '.version' <<<"${ans%$'\n'*}" 2>/dev/null || echo "$v")
  [[ $v != "$v0" ]] && break
  sleep 0.1
done
after=$(doc)
echo "  version $v0 -> $v after $reads reads ($failed not 200)"
echo "  document before: $before"
echo "  document after:  $after"
[[ $before == "$after" ]] && echo "  (equal)" || echo "  (DIFFERENT)"
if [[ $v == "$v0" || $failed != 0 || $before != "$after" || $before == null ]]; then
  echo "projector demo: the rebuild did not switch to an equal document within 12 s with every read answered" >&2
  exit 1
fi
