#!/usr/bin/env bash
# Event-store appends through HTTP (group commit) against two ceilings of the same Postgres,
# measured in the same run:
#   ours:     WRITERS (64) keep-alive HTTP connections (wrk, bench/append.lua), each appending
#             one ~200-byte event at a time to a new stream ("no_stream"). Only 201s count.
#   single:   the per-commit ceiling: pgbench, one single-row INSERT of a similar payload per
#             transaction (prepared), with 1, 8 and 64 clients; the best of the sweep counts.
#   batched:  the database's ceiling for the same work: pgbench calling baton.append_batch()
#             with the group size ours achieved (its group-size histogram on /metrics), the
#             event values ours stored and a new stream per append, from 2 clients (the
#             broker's two group-commit slots), unnamed statements like the broker's.
# Each side runs ROUNDS (3) times, the order of the sides alternating round by round, with a
# CHECKPOINT before every measured run; a side's figure is the median of its runs. Then
# ours runs once in each variant: existing streams ("any"), numeric expected_version, and 8
# writers on one hot stream.
#   ratio          = ours / best single-row figure   (target >= 2)
#   overhead_ratio = ours / batched ceiling          (target >= 0.8)
# Postgres keeps its default durability (fsync, synchronous_commit and full_page_writes on;
# checked below). The relay is off: this measures the append path. The last line is one
# JSON object, also appended to bench/results/append.jsonl.
# Environment: BENCH_DURATION (10 s per run; about 4 min in all), BENCH_ROUNDS (3),
# BENCH_WRITERS (64), BENCH_WARMUP (2 s), BENCH_SAVE (1), BATON_BUILD_DIR.
source "$(dirname "$0")/lib.sh"
shopt -s inherit_errexit # a failed step inside $(...) stops the run
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WRITERS=${BENCH_WRITERS:-64}
WARMUP=${BENCH_WARMUP:-2}
SWEEP=(1 8 64)
HOT_WRITERS=8
BATCH_CLIENTS=2
POOL=256        # seeded streams per wrk thread in the existing/numeric variants
TARGET_RATIO=2
TARGET_OVERHEAD=0.8
THREADS=2
for c in wrk pgbench psql jq; do command -v "$c" >/dev/null || { echo "$c not found: run ./dev deps" >&2; exit 1; }; done
for v in DURATION ROUNDS WRITERS WARMUP; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_$v must be a positive whole number, not '${!v}'" >&2; exit 1; }
done

bench_stack_up
tmp=$BENCH_RUN
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -tA "$BATON_PG_DSN")
bench_pg_durability
checkpoint() { "${PSQL[@]}" -c CHECKPOINT; }
median() { jq -s 'sort | .[length / 2 | floor]'; }

bport=$(free_port)
start_broker "$bport" "$tmp/broker.log" BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS" \
  BATON_PG_DSN="$BATON_PG_DSN" BATON_BROKER_RELAY=false
[[ "$(http_status "$bport" /readyz)" == 200 ]] || { cat "$tmp/broker.log" >&2; echo "broker not ready" >&2; exit 1; }
url="http://127.0.0.1:$bport"

# ---- ours -----------------------------------------------------------------------------------
metric() { curl -fsS "$url/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
positions() { "${PSQL[@]}" -c "SELECT last FROM baton.positions"; }

# run_ours MODE RUN CONNS SECONDS: one wrk run; prints its figures as one JSON object:
# appends/s (201 only), latency, statuses, and the mean group size from the broker's metrics.
run_ours() {
  local mode=$1 run=$2 conns=$3 secs=$4 threads=$THREADS out sum g0 a0 g1 a1 p0 p1
  ((conns >= threads)) || threads=1
  g0=$(metric baton_broker_append_group_size_count)
  a0=$(metric baton_broker_append_group_size_sum)
  p0=$(positions)
  out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" -s "$ROOT/bench/append.lua" "$url" -- "$mode" "$run" "$POOL" 2>&1)
  g1=$(metric baton_broker_append_group_size_count)
  a1=$(metric baton_broker_append_group_size_sum)
  p1=$(positions)
  grep -E "requests in|Non-2xx|Socket errors" <<<"$out" >&2 || true
  sum=$(wrk_json "$out")
  # The oracle: every append answered 201 is a committed event (positions count them).
  jq -c --arg mode "$mode" --argjson conns "$conns" --argjson g0 "$g0" --argjson g1 "$g1" \
    --argjson a0 "$a0" --argjson a1 "$a1" --argjson stored "$((p1 - p0))" '
    (.statuses["201"] // 0) as $created | ($g1 - $g0) as $groups
    | if $stored < $created then error("only \($stored) events stored for \($created) appends answered 201") else . end
    | {mode: $mode, writers: $conns, appends_per_s: ($created / .seconds | round),
       appended: $created, non_2xx: .non_2xx, statuses: .statuses, seconds: .seconds,
       p50_ms: .p50_ms, p99_ms: .p99_ms, socket_errors: .socket_errors,
       group_mean: (if $groups > 0 then (($a1 - $a0) / $groups * 10 | round) / 10 else 0 end),
       events_stored: $stored}' <<<"$sum"
}

# Streams for the existing and numeric variants, each with one event (through append_batch,
# in one transaction: seeding through HTTP would take longer than the variant runs).
seed() {
  local n=$((THREADS * POOL)) bad
  bad=$("${PSQL[@]}" -c "SELECT count(*) FILTER (WHERE status <> 0) FROM baton.append_batch(
    ARRAY(SELECT 'bench-$1-' || k FROM generate_series(1, $n) AS k), array_fill(0::bigint, ARRAY[$n]),
    array_fill(1, ARRAY[$n]), array_fill(NULL::text, ARRAY[$n]), ARRAY(SELECT generate_series(1, $n)),
    ARRAY(SELECT 'seed-' || k FROM generate_series(1, $n) AS k),
    array_fill('bench.appended'::text, ARRAY[$n]), array_fill('/bench/append'::text, ARRAY[$n]),
    array_fill('1.0'::text, ARRAY[$n]), array_fill(NULL::text, ARRAY[$n]),
    array_fill(NULL::text, ARRAY[$n]), array_fill(NULL::text, ARRAY[$n]),
    array_fill(NULL::text, ARRAY[$n]), array_fill(encode(convert_to('{\"n\":0}', 'UTF8'), 'hex'), ARRAY[$n]),
    array_fill(NULL::jsonb, ARRAY[$n]))")
  [[ "$bad" == 0 ]] || { echo "seeding bench-$1-* failed for $bad streams" >&2; exit 1; }
}

# ---- single: pgbench, one single-row INSERT per transaction --------------------------------
"${PSQL[@]}" -c "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, stream text NOT NULL,
  payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
pad=$(printf 'x%.0s' $(seq 96))
printf '%s\n' "INSERT INTO bench_insert (stream, payload) VALUES ('bench-' || :client_id, '{\"n\":1,\"pad\":\"$pad\"}');" >"$tmp/insert.sql"

# pgbench_tps OUTPUT: the committed transactions per second, after checking none failed.
pgbench_tps() {
  local tps failed
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$1" | head -n1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$1")
  # No transaction at all within -T (a machine too busy to even connect): no tps line.
  grep -q '^number of transactions actually processed: 0$' <<<"$1" && { say "pgbench: no transaction completed"; tps=0; }
  [[ -n "$tps" ]] || { printf 'cannot read pgbench tps:\n%s\n' "$1" >&2; return 1; }
  [[ "${failed:-0}" == 0 ]] || { printf 'pgbench: %s failed transactions:\n%s\n' "$failed" "$1" >&2; return 1; }
  echo "$tps"
}
# run_single CLIENTS SECONDS: single-row INSERT transactions per second.
run_single() {
  local j=$THREADS out t
  (($1 >= j)) || j=1
  out=$(pgbench -n -c "$1" -j "$j" -T "$2" -M prepared -f "$tmp/insert.sql" "$BATON_PG_DSN" 2>&1)
  t=$(pgbench_tps "$out")
  awk -v t="$t" 'BEGIN { printf "%.0f\n", t }'
}

# ---- batched: pgbench calling baton.append_batch() with ours' group size --------------------
# The script is one call with G appends of one event each: a new stream per append (names made
# unique by the transaction id), and the values of an event ours stored (run "w", the warm-up),
# as literal arrays that Postgres parses on every call, as it parses the broker's parameters.
# It is the function the broker calls (with p_pkeys, NULL: no partitionkey), not migration 2's
# 14-argument one that is kept for rolling upgrades and skips the payload hash and the key.
batch_script() {
  local g=$1 f=$tmp/batch-$1.sql
  [[ -s "$f" ]] || "${PSQL[@]}" -c "SELECT format(\$f\$SELECT status, first_version, last_version, position, current_version, stored
FROM baton.append_batch(ARRAY(SELECT 'cap-' || txid_current() || '-' || g FROM generate_series(1, %s) AS g),
  %L::bigint[], %L::int[], %L::text[], %L::int[], %L::text[], %L::text[], %L::text[], %L::text[],
  %L::text[], %L::text[], %L::text[], %L::text[], %L::text[], %L::jsonb[]);\$f\$, $g,
  array_fill(0::bigint, ARRAY[$g]), array_fill(1, ARRAY[$g]), array_fill(NULL::text, ARRAY[$g]),
  ARRAY(SELECT generate_series(1, $g)),
  array_fill(e.id, ARRAY[$g]), array_fill(e.type, ARRAY[$g]), array_fill(e.source, ARRAY[$g]),
  array_fill(e.specversion, ARRAY[$g]), array_fill(e.subject, ARRAY[$g]), array_fill(e.time, ARRAY[$g]),
  array_fill(e.datacontenttype, ARRAY[$g]), array_fill(e.dataschema, ARRAY[$g]),
  array_fill(encode(e.data, 'hex'), ARRAY[$g]), array_fill(e.extensions, ARRAY[$g]))
  FROM baton.events AS e WHERE e.stream LIKE 'bench-w-%' LIMIT 1" >"$f"
  [[ -s "$f" ]] || { echo "no event of the warm-up to copy into $f" >&2; exit 1; }
  echo "$f"
}
# run_batched GROUP SECONDS: appends per second (transactions per second x GROUP).
run_batched() {
  local f out t
  f=$(batch_script "$1")
  out=$(pgbench -n -c $BATCH_CLIENTS -j $BATCH_CLIENTS -T "$2" -M extended -f "$f" "$BATON_PG_DSN" 2>&1)
  t=$(pgbench_tps "$out")
  awk -v t="$t" -v g="$1" 'BEGIN { printf "%.0f\n", t * g }'
}

# ---- the rounds -------------------------------------------------------------------------------
say "warm-up: ours, single-row INSERT and append_batch, ${WARMUP}s each"
w=$(run_ours new w "$WRITERS" "$WARMUP")
group=$(jq -r '.group_mean | round | if . < 1 then 1 else . end' <<<"$w")
run_single "$WRITERS" "$WARMUP" >/dev/null
run_batched "$group" "$WARMUP" >/dev/null

ours_runs=() single_runs=() batched_runs=()
side_ours() {
  local r
  checkpoint
  r=$(run_ours new "m$1" "$WRITERS" "$DURATION")
  ours_runs+=("$r")
  group=$(jq -r '.group_mean | round | if . < 1 then 1 else . end' <<<"$r")
  say "round $1 ours: $(jq -r '"\(.appends_per_s) appends/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, non-2xx \(.non_2xx), \(.group_mean) appends per group"' <<<"$r")"
}
side_single() {
  local c t
  for c in "${SWEEP[@]}"; do
    checkpoint
    t=$(run_single "$c" "$DURATION")
    single_runs+=("{\"clients\":$c,\"tx_per_s\":$t}")
    say "round $1 single-row INSERT, $c clients: $t tx/s"
  done
}
side_batched() {
  local t
  checkpoint
  t=$(run_batched "$group" "$DURATION")
  batched_runs+=("{\"group\":$group,\"appends_per_s\":$t}")
  say "round $1 append_batch, groups of $group from $BATCH_CLIENTS clients: $t appends/s"
}
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2)); then order=(ours single batched); else order=(batched single ours); fi
  for s in "${order[@]}"; do "side_$s" "$round"; done
done

# ---- the variants ---------------------------------------------------------------------------
seed existing
seed numeric
variants=()
for v in "existing $WRITERS" "numeric $WRITERS" "hot $HOT_WRITERS"; do
  read -r mode conns <<<"$v"
  checkpoint
  r=$(run_ours "$mode" v "$conns" "$DURATION")
  variants+=("$r")
  say "variant $mode, $conns writers: $(jq -r '"\(.appends_per_s) appends/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, non-2xx \(.non_2xx), \(.group_mean) appends per group"' <<<"$r")"
done
broker_hwm_kb=$(hwm_kb "$BROKER_PID")

bench_cleanup
trap - EXIT
ours_json=$(printf '%s\n' "${ours_runs[@]}" | jq -s -c .)
single_json=$(printf '%s\n' "${single_runs[@]}" | jq -s -c .)
batched_json=$(printf '%s\n' "${batched_runs[@]}" | jq -s -c .)
ours=$(jq '.[].appends_per_s' <<<"$ours_json" | median)
batched=$(jq '.[].appends_per_s' <<<"$batched_json" | median)
# The single-row figure: the median over rounds for each client count, then the best count.
single_by=$(jq -c 'group_by(.clients) | map({clients: .[0].clients,
  tx_per_s: (map(.tx_per_s) | sort | .[length / 2 | floor])})' <<<"$single_json")
single=$(jq 'map(.tx_per_s) | max' <<<"$single_by")
single_clients=$(jq 'max_by(.tx_per_s).clients' <<<"$single_by")
r=$(ratio "$ours" "$single")
o=$(ratio "$ours" "$batched")
echo "append: ours $ours appends/s; single-row INSERT best $single tx/s ($single_clients clients): ratio ${r} (target >= $TARGET_RATIO)" >&2
echo "append: append_batch ceiling $batched appends/s ($BATCH_CLIENTS clients): overhead_ratio ${o} (target >= $TARGET_OVERHEAD)" >&2
bench_result append "$(jq -cn --argjson ours "$ours" --argjson single "$single" \
  --argjson single_clients "$single_clients" --argjson batched "$batched" --argjson r "$r" \
  --argjson o "$o" --argjson tr "$TARGET_RATIO" --argjson to "$TARGET_OVERHEAD" \
  --argjson writers "$WRITERS" --argjson secs "$DURATION" --argjson rounds "$ROUNDS" \
  --argjson ours_runs "$ours_json" --argjson single_runs "$single_json" --argjson single_by "$single_by" \
  --argjson batched_runs "$batched_json" --argjson variants "$(printf '%s\n' "${variants[@]}" | jq -s -c .)" \
  --argjson bclients $BATCH_CLIENTS --arg durability "$durability" --argjson hwm "${broker_hwm_kb:-null}" '
  {bench: "append", unit: "appends/s (single: INSERT transactions/s)",
   ours: $ours, single_best: $single, single_best_clients: $single_clients, batched: $batched,
   ratio: $r, target_ratio: $tr, ratio_met: ($r >= $tr),
   overhead_ratio: $o, target_overhead_ratio: $to, overhead_ratio_met: ($o >= $to),
   writers: $writers, duration_s: $secs, rounds: $rounds, batched_clients: $bclients,
   group_size: ($ours_runs | map(.group_mean)),
   ours_runs: $ours_runs, single_by_clients: $single_by, single_runs: $single_runs,
   batched_runs: $batched_runs, variants: $variants,
   broker_peak_rss_kb: $hwm, postgres: $durability}')"
