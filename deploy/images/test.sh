#!/usr/bin/env bash
# deploy/images/test.sh: runs each built image the way a cluster would, as uid 65532 with no
# shell: `--help` must work, and against a dev stack on loopback (Postgres, Redis,
# baton-devkafka, started here in a private run dir on free ports) the service must answer
# 200 on /readyz. Prints each image's size and fails when one exceeds BATON_IMAGE_MAX_MB.
#   test.sh [SERVICE...]     (default: broker saga projector)
# A service whose binary on this branch is not a server yet (its --help prints only a usage
# line and exits 2) is reported as SKIP for the /readyz part, never as a pass.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
TAG=${BATON_IMAGE_TAG:-dev}
MAX_MB=${BATON_IMAGE_MAX_MB:-35}
READY_TIMEOUT=${BATON_IMAGE_READY_TIMEOUT:-30}
RUNAS=65532:65532

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images test: error: %s\n' "$*" >&2; exit 1; }

svcs=("$@")
[[ ${#svcs[@]} -gt 0 ]] || svcs=(broker saga projector)
command -v buildah >/dev/null || die "buildah not found: run ./dev deps"

WORK=$(mktemp -d /tmp/baton-images-test.XXXXXX)
CTRS=()
RUN_PID=''
cleanup() {
  local c
  [[ -n $RUN_PID ]] && { kill -TERM "$RUN_PID" 2>/dev/null; wait "$RUN_PID" 2>/dev/null || true; }
  for c in "${CTRS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  if [[ -f $WORK/run/env ]]; then BATON_DEV_RUN_DIR="$WORK/run" "$ROOT/dev" stack-down >/dev/null 2>&1 || true; fi
  [[ -n ${BATON_IMAGE_KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# Size in MB (10^6 bytes, uncompressed layers), from what `buildah images` reports ("21.5 MB").
image_mb() {
  buildah images --json "$1" | jq -r '.[0].size' |
    awk '{ f = $2 == "GB" ? 1000 : $2 == "kB" ? 0.001 : $2 == "B" ? 0.000001 : 1; printf "%.1f\n", $1 * f }'
}

free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]] && { echo "$p"; return; }
  done
  die "no free port"
}

# The pid of the process running /usr/local/bin/baton below process $1 (buildah run's child).
service_pid() {
  local p kids
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
  for p in $kids; do
    if [[ $(readlink "/proc/$p/exe" 2>/dev/null) == */baton-* ]]; then echo "$p"; return; fi
    service_pid "$p"
  done
}

stack_up() {
  [[ -f $WORK/run/env ]] && return 0
  # The stack's Kafka is baton-devkafka from the build tree: build it first on a fresh clone.
  local bdir=${BATON_BUILD_DIR:-build}
  [[ $bdir == /* ]] || bdir=$ROOT/$bdir
  if [[ ! -x $bdir/devkafka/baton-devkafka ]]; then
    say "images test: building baton-devkafka for the dev stack (./dev build)"
    "$ROOT/dev" build >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; die "./dev build failed"; }
  fi
  say "images test: starting a dev stack (Postgres, Redis, devkafka) on free loopback ports"
  BATON_DEV_RUN_DIR="$WORK/run" BATON_DEV_AUTO_PORTS=1 \
    BATON_DEV_KAFKA_TOPICS="events:3,order.events:3,saga.replies:3,inventory.commands:3,payment.commands:3,shipping.commands:3,legacy.billing.invoices:3,projector.dlq:1" \
    "$ROOT/dev" stack-up >"$WORK/stack.log" 2>&1 || { tail -n 30 "$WORK/stack.log" >&2; die "dev stack-up failed"; }
}
env_of() { sed -n "s/^$1=//p" "$WORK/run/env" | tail -n1; }

fails=0
declare -A RESULT SIZE
for svc in "${svcs[@]}"; do
  img="localhost/baton-$svc:$TAG"
  buildah inspect --type image "$img" >/dev/null 2>&1 || die "$img is not built: run ./dev images $svc"
  SIZE[$svc]=$(image_mb "$img")
  ctr=$(buildah from "$img"); CTRS+=("$ctr")

  # 1. --help as the numeric user, with the image's own entrypoint and nothing else.
  rc=0
  buildah run --isolation chroot --user "$RUNAS" "$ctr" -- /usr/local/bin/baton --help >"$WORK/$svc.help" 2>&1 || rc=$?
  if [[ $rc -eq 2 ]] && grep -q '^usage:' "$WORK/$svc.help" && ! grep -q 'configured by environment' "$WORK/$svc.help"; then
    RESULT[$svc]="SKIP (not a server on this branch yet: $(head -n1 "$WORK/$svc.help"))"
    continue
  fi
  if [[ $rc -ne 0 ]] || ! grep -q "baton-$svc" "$WORK/$svc.help"; then
    cat "$WORK/$svc.help" >&2
    RESULT[$svc]="FAIL (--help as $RUNAS exited $rc)"; fails=$((fails + 1)); continue
  fi

  # 2. /readyz against the dev stack, the service bound to loopback on a free port.
  stack_up
  port=$(free_port)
  envs=(--env "BATON_HTTP_HOST=127.0.0.1" --env "BATON_HTTP_PORT=$port"
    --env "BATON_PG_DSN=$(env_of BATON_PG_DSN)" --env "BATON_REDIS_URL=$(env_of BATON_REDIS_URL)"
    --env "BATON_KAFKA_BROKERS=$(env_of BATON_KAFKA_BROKERS)")
  vols=()
  if [[ $svc == broker ]]; then
    # The API tokens as Kubernetes mounts a Secret with fsGroup 65532 and mode 0440: root
    # owns the file, the service reads it through its group.
    mkdir -p "$WORK/tokens" && echo image-test-token >"$WORK/tokens/tokens"
    chown -R 0:65532 "$WORK/tokens" && chmod 0750 "$WORK/tokens" && chmod 0440 "$WORK/tokens/tokens"
    vols=(--volume "$WORK/tokens:/etc/baton/tokens:ro"); envs+=(--env BATON_API_TOKENS_FILE=/etc/baton/tokens/tokens)
  elif [[ $svc == saga ]]; then
    vols=(--volume "$ROOT/examples/sagas:/etc/baton/sagas:ro"); envs+=(--env BATON_SAGA_DEFINITIONS=/etc/baton/sagas)
  elif [[ $svc == projector ]]; then
    vols=(--volume "$ROOT/examples/projections:/etc/baton/projections:ro"); envs+=(--env BATON_PROJECTIONS=/etc/baton/projections)
  fi
  buildah run --isolation chroot --network host --user "$RUNAS" "${envs[@]}" "${vols[@]}" "$ctr" \
    -- /usr/local/bin/baton >"$WORK/$svc.log" 2>&1 &
  RUN_PID=$!
  code=none
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)
    [[ $code == 200 ]] && break
    kill -0 "$RUN_PID" 2>/dev/null || break
    sleep 0.1
  done
  auth=''
  if [[ $code == 200 && $svc == broker ]]; then
    # 401 without the token, accepted with it: the mounted Secret was read as uid 65532.
    ev='{"specversion":"1.0","id":"image-test-1","source":"/image-test","type":"image.test"}'
    a1=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/cloudevents+json' -d "$ev" "http://127.0.0.1:$port/v1/topics/events/events" || true)
    a2=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/cloudevents+json' -H 'Authorization: Bearer image-test-token' -d "$ev" "http://127.0.0.1:$port/v1/topics/events/events" || true)
    auth="; publish: $a1 without the token, $a2 with it"
    [[ $a1 == 401 && $a2 == 200 ]] || auth_bad=1
  fi
  # buildah run answers SIGTERM by killing its child, so the graceful stop a kubelet would
  # ask for is sent to the service process itself (found below the buildah we started).
  spid=$(service_pid "$RUN_PID")
  kill -TERM "${spid:-$RUN_PID}" 2>/dev/null || true
  rc=0; wait "$RUN_PID" || rc=$?
  RUN_PID=''
  if [[ -n ${auth_bad:-} ]]; then
    tail -n 20 "$WORK/$svc.log" >&2
    RESULT[$svc]="FAIL (API tokens from the mounted file not applied$auth)"; fails=$((fails + 1)); unset auth_bad; continue
  fi
  if [[ $code == 200 && $rc -ne 0 ]]; then
    tail -n 20 "$WORK/$svc.log" >&2
    RESULT[$svc]="FAIL (exit $rc after SIGTERM, not a graceful stop)"; fails=$((fails + 1)); continue
  fi
  if [[ $code != 200 ]]; then
    tail -n 20 "$WORK/$svc.log" >&2
    RESULT[$svc]="FAIL (/readyz answered $code within ${READY_TIMEOUT}s)"; fails=$((fails + 1)); continue
  fi
  RESULT[$svc]="PASS (--help and /readyz 200 as uid ${RUNAS%%:*}$auth; exit $rc after SIGTERM)"
done

printf '\n%-16s %9s  %s\n' image size result
for svc in "${svcs[@]}"; do
  sz=${SIZE[$svc]}
  res=${RESULT[$svc]}
  if awk -v s="$sz" -v m="$MAX_MB" 'BEGIN { exit !(s > m) }'; then
    res="FAIL (size $sz MB is over the $MAX_MB MB budget); $res"; fails=$((fails + 1))
  fi
  printf 'baton-%-10s %6s MB  %s\n' "$svc" "$sz" "$res"
done
[[ $fails -eq 0 ]] || die "$fails image check(s) failed"
