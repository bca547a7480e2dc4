# shellcheck shell=bash
# Shared helpers for the benchmarks: a private stack with default durability, service start-up
# with timing, wrk's status counts, and the JSON summary line that is also saved under
# bench/results/. Sourced by bench/*.sh; not run on its own.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BATON_BUILD_DIR:-$ROOT/build}
BENCH_PIDS=()
# The machine's load when the benchmark began: figures taken on a busy machine say so.
BENCH_LOAD1=$(cut -d' ' -f1 /proc/loadavg)

say() { printf '== %s\n' "$*" >&2; }

now_ns() { date +%s%N; }

# Builds if a binary is missing, then starts Postgres, Redis and devkafka in a temp run dir.
# Benchmarks keep Postgres's default durability (fsync on, synchronous_commit on).
bench_stack_up() {
  [[ -x "$BUILD/broker/baton-broker" && -x "$BUILD/devkafka/baton-devkafka" ]] || (cd "$ROOT" && ./dev build >&2)
  BENCH_RUN=$(mktemp -d /tmp/baton-bench.XXXXXX)
  export BATON_DEV_RUN_DIR=$BENCH_RUN BATON_DEV_AUTO_PORTS=1 BATON_DEV_FAST_PG=0 BATON_BUILD_DIR=$BUILD
  (cd "$ROOT" && ./dev stack-up >&2)
  set -a
  # shellcheck disable=SC1091
  source "$BENCH_RUN/env"
  set +a
  trap bench_cleanup EXIT
}

# Sets `durability` to Postgres's durability settings (for the result) and stops unless fsync,
# synchronous_commit and full_page_writes are on: the figures are for default durability.
# Needs PSQL (the psql command line for the stack's database).
bench_pg_durability() {
  local s
  durability=$("${PSQL[@]}" -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name)
    FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method')")
  say "postgres: $durability"
  for s in fsync=on synchronous_commit=on full_page_writes=on; do
    [[ " $durability " == *" $s "* ]] || { echo "postgres does not run with $s" >&2; exit 1; }
  done
}

bench_cleanup() {
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "${BENCH_RUN:-}" ]]; then
    (cd "$ROOT" && BATON_DEV_RUN_DIR=$BENCH_RUN ./dev stack-down >/dev/null 2>&1) || true
    rm -rf "$BENCH_RUN"
  fi
}

free_port() {
  local p
  for p in $(shuf -i 20000-45000 -n 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }
  done
  return 1
}

# http_status PORT PATH: the status of one GET over bash's /dev/tcp (no fork per attempt).
http_status() {
  local line
  exec 3<>/dev/tcp/127.0.0.1/"$1" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' "$2" >&3
  read -r -t 2 line <&3 || true
  exec 3<&- 3>&-
  line=${line#HTTP/1.1 }
  echo "${line%% *}"
}

# start_broker PORT LOG [ENV=VALUE...]: starts baton-broker; sets BROKER_PID and READY_MS
# (exec to the first /readyz 200, polled every millisecond). The poll forks nothing: a
# `sleep`, `date` or $(...) per attempt costs milliseconds each on a busy machine and used to
# add tens of ms to the figure. The tick is a read timeout on a pipe we hold both ends of.
start_broker() {
  local port=$1 log=$2
  shift 2
  local t0 t1 tick line
  exec {tick}<> <(:)
  t0=${EPOCHREALTIME/./}
  env "$@" BATON_HTTP_PORT="$port" BATON_LOG_LEVEL=warn "$BUILD/broker/baton-broker" >"$log" 2>&1 &
  BROKER_PID=$!
  BENCH_PIDS+=("$BROKER_PID")
  for _ in {1..20000}; do
    if { exec 3<>/dev/tcp/127.0.0.1/"$port"; } 2>/dev/null; then
      printf 'GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
      line=
      read -r -t 2 line <&3 || true
      exec 3<&- 3>&-
      [[ "$line" == "HTTP/1.1 200"* ]] && break
    fi
    kill -0 "$BROKER_PID" 2>/dev/null || break # it exited (a port taken meanwhile, say)
    read -r -t 0.001 -u "$tick" _ || true
  done
  t1=${EPOCHREALTIME/./}
  exec {tick}<&-
  READY_MS=$(( (t1 - t0) / 1000 ))
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# wrk_rate ARGS...: runs wrk and prints requests/second.
wrk_rate() { wrk "$@" 2>&1 | awk '/^Requests\/sec:/ {print $2}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "null" }'; }

# wrk_json OUTPUT: the summary object printed by wrk_status.lua (ok = 2xx answers only).
wrk_json() {
  local j
  j=$(sed -n 's/^WRK_JSON //p' <<<"$1")
  [[ -n "$j" ]] || { printf 'wrk printed no summary:\n%s\n' "$1" >&2; return 1; }
  echo "$j"
}

# bench_result NAME JSON: adds where and when the figures were taken (commit, date, cores,
# load average at the start), prints the object as the last line of output and appends it
# to bench/results/NAME.jsonl (BENCH_SAVE=0: don't save; BENCH_RESULTS_DIR: another place).
bench_result() {
  local name=$1 json=$2 commit dirty=false line dir=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
  commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  [[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] || dirty=true
  line=$(jq -c --arg commit "$commit" --argjson dirty "$dirty" --arg date "$(date -u +%FT%TZ)" \
    --argjson cores "$(nproc)" --argjson load1 "$BENCH_LOAD1" --arg note "${BENCH_NOTE:-}" \
    '{bench: .bench, commit: $commit, dirty: $dirty, date: $date, cores: $cores,
      load1_at_start: $load1} + (if $note != "" then {note: $note} else {} end) + .' <<<"$json")
  if [[ "${BENCH_SAVE:-1}" != 0 ]]; then
    mkdir -p "$dir"
    echo "$line" >>"$dir/$name.jsonl"
    say "saved to $dir/$name.jsonl"
  fi
  echo "$line"
}
