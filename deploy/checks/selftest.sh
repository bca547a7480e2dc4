#!/usr/bin/env bash
# deploy/checks/selftest.sh: shows that each deploy check fails when its rule is broken
# (ctest: deploy_manifests_selftest). For every case it copies deploy/ and examples/ to a
# temporary tree, breaks one thing on purpose, runs run.sh on the copy, and asserts that
# run.sh fails, that the step meant to catch it failed, and that it printed the expected
# message. The unbroken copy must pass first, so a case cannot pass by a broken setup.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
WORK=$(mktemp -d /tmp/baton-deploy-selftest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

"$HERE/npm-ci.sh" || { echo "selftest: npm ci failed" >&2; exit 2; }

# edit FILE JS: replaces FILE's text s by the value of the JavaScript expression JS, and fails
# when the expression changed nothing (a case whose break did not apply must not pass).
edit() {
  node -e '
    const fs = require("fs"); const [f, expr] = process.argv.slice(1);
    const s = fs.readFileSync(f, "utf8"); const out = eval(expr);
    if (out === s) { console.error("selftest: the edit changed nothing in " + f); process.exit(1); }
    fs.writeFileSync(f, out);' "$1" "$2"
}

fresh() { # DIR: a pristine copy there (node_modules linked, not copied)
  rm -rf "$1" && mkdir -p "$1"
  cp -a "$ROOT/examples" "$1/examples"
  tar -C "$ROOT" --exclude=deploy/checks/node_modules -cf - deploy | tar -C "$1" -xf -
  ln -s "$HERE/node_modules" "$1/deploy/checks/node_modules"
}

# case NAME STEP EXPECTED-MESSAGE BREAK-COMMAND...: runs in the background (two at a time,
# the checks are CPU-bound); its verdict goes to $WORK/N.result, read in order at the end.
JOBS=${BATON_SELFTEST_JOBS:-2}
n=0
case_() {
  n=$((n + 1))
  while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n || true; done
  one_case "$WORK/$n" "$@" >"$WORK/$n.result" 2>&1 &
}
one_case() {
  local dir=$1 name=$2 stepname=$3 msg=$4; shift 4
  fresh "$dir/t"
  if ! (cd "$dir/t/deploy" && "$@"); then echo "FAIL  $name: could not break the copy"; return; fi
  local out rc=0
  # Only the overlay the step looks at is built (prod and canary for the prod policy).
  local overlays=dev
  [[ $stepname == "policy prod+canary" ]] && overlays=prod,canary
  out=$("$dir/t/deploy/checks/run.sh" --only "${stepname%% *}" --overlays "$overlays" "$dir/t" 2>&1) || rc=$?
  if [[ $rc -ne 1 ]]; then
    echo "FAIL  $name: run.sh exited $rc, not 1"; printf '%s\n' "$out" | tail -n 15
  elif ! grep -qF -- "--- $stepname: FAILED" <<<"$out"; then
    echo "FAIL  $name: step '$stepname' did not fail"; printf '%s\n' "$out" | tail -n 15
  elif ! grep -qF -- "$msg" <<<"$out"; then
    echo "FAIL  $name: no message '$msg'"; printf '%s\n' "$out" | tail -n 15
  else
    echo "ok    $name: '$stepname' failed with: $(grep -F -m1 -- "$msg" <<<"$out" | cut -c1-150)"
  fi
}

fresh "$WORK/t"
if ! "$WORK/t/deploy/checks/run.sh" "$WORK/t" >"$WORK/baseline.log" 2>&1; then
  cat "$WORK/baseline.log"; echo "selftest: the unbroken copy does not pass; nothing to test" >&2; exit 1
fi
echo "ok    baseline: the unbroken copy passes every check"

B=k8s/base
case_ "yaml syntax" yamllint "trailing-spaces" edit $B/services/saga.yaml 's.replace("kind: Service\n", "kind: Service   \n")'
case_ "dashboard JSON syntax" json "SyntaxError" edit $B/monitoring/grafana-dashboard.json 's.replace("\"panels\": [", "\"panels\": [,")'
case_ "definitions drift from examples/" definitions "differs from" \
  bash -c 'echo "# changed" >>../examples/sagas/checkout.yaml'
case_ "new example not in the ConfigMap" definitions "is not in base/kustomization.yaml" \
  bash -c 'cp ../examples/sagas/checkout.yaml ../examples/sagas/refund.yaml; cp ../examples/sagas/refund.yaml k8s/base/definitions/sagas/'
case_ "kustomize: missing resource" "kustomize dev" "kustomize dev: FAILED" \
  edit $B/kustomization.yaml 's.replace("  - httproute.yaml\n", "  - httproute.yaml\n  - missing.yaml\n")'
case_ "core object: wrong type" validate "must be integer" \
  edit $B/services/saga.yaml 's.replace("terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: soon")'
case_ "core object: missing required field" validate "must have required property name" \
  edit $B/services/projector.yaml 's.replace("        - name: projector\n          image:", "        - image:")'
case_ "CRD: unknown field (Strimzi Kafka)" validate "must NOT have additional properties (resources)" \
  edit $B/deps/kafka.yaml 's.replace("    config:\n", "    resources: {limits: {memory: 2Gi}}\n    config:\n")'
case_ "CRD: wrong type (KafkaTopic)" validate "must be integer" \
  edit $B/deps/topics.yaml 's.replace("partitions: 6", "partitions: six")'
case_ "CRD: bad enum (CNPG Cluster)" validate "must be equal to one of the allowed values" \
  edit $B/deps/postgres.yaml 's.replace("primaryUpdateStrategy: unsupervised", "primaryUpdateStrategy: whenever")'
case_ "CRD: missing required (KEDA ScaledObject)" validate "must have required property 'triggers'" \
  edit $B/services/saga.yaml 's.replace(/  triggers:\n[\s\S]*$/, "")'
case_ "Gateway API object: wrong type (HTTPRoute)" validate "must be integer" \
  edit $B/httproute.yaml 's.replace("{name: baton-broker, port: 8080}", "{name: baton-broker, port: http}")'
case_ "prometheus-operator object: missing required (PrometheusRule)" validate "must have required property expr" \
  edit $B/monitoring/prometheusrule.yaml 's.replace("          expr: up{", "          exp: up{")'
case_ "object with no schema" validate "no schema for example.com/v1:Widget" \
  bash -c 'printf "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n" >k8s/base/widget.yaml &&
    sed -i "s#^  - httproute.yaml#  - httproute.yaml\n  - widget.yaml#" k8s/base/kustomization.yaml'
case_ "no readiness probe" "policy dev" "no readinessProbe on GET /readyz" \
  edit $B/services/projector.yaml 's.replace(/          readinessProbe:\n(            .*\n)+/, "")'
case_ "no liveness probe" "policy dev" "no livenessProbe on GET /healthz" \
  edit $B/broker-deployment/deployment.yaml 's.replace(/          livenessProbe:\n(            .*\n)+/, "")'
case_ "no startup probe" "policy dev" "no startupProbe" \
  edit $B/services/saga.yaml 's.replace(/          startupProbe:\n(            .*\n)+/, "")'
case_ "no memory limit" "policy prod+canary" "no resources.limits.memory" \
  edit $B/services/saga.yaml 's.replace("limits: {cpu: \"1\", memory: 512Mi}", "limits: {cpu: \"1\"}")'
case_ "runs as root" "policy dev" "runAsNonRoot is not true" \
  edit $B/services/saga.yaml 's.replaceAll("runAsNonRoot: true", "runAsNonRoot: false")'
case_ "writable root filesystem" "policy dev" "readOnlyRootFilesystem is not true" \
  edit $B/broker-deployment/deployment.yaml 's.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")'
case_ "image tag latest" "policy dev" 'uses the tag "latest"' \
  edit k8s/overlays/dev/kustomization.yaml 's.replace("baton-saga, newTag: \"0.1.0-dev\"", "baton-saga, newTag: \"latest\"")'
case_ "image without tag" "policy dev" "has no tag" \
  edit $B/deps/redis.yaml 's.replace("redis:7.2.5-bookworm", "redis")'
case_ "no PodDisruptionBudget" "policy dev" "no PodDisruptionBudget selects its pods" \
  edit $B/services/saga.yaml 's.replace(/---\napiVersion: policy\/v1\n[\s\S]*?(?=---\n)/, "")'
case_ "no NetworkPolicy for a service" "policy dev" "no NetworkPolicy (beyond the default deny) selects its pods" \
  edit $B/networkpolicies.yaml 's.replaceAll("matchLabels: {baton.dev/api: \"true\"}\n  policyTypes", "matchLabels: {baton.dev/api: \"no\"}\n  policyTypes")'
case_ "no default deny" "policy dev" "no default-deny NetworkPolicy" \
  edit $B/networkpolicies.yaml 's.replace("  policyTypes: [Ingress, Egress]\n---", "  policyTypes: [Ingress]\n---")'
case_ "grace period below the shutdown timeout" "policy dev" "is not above BATON_SHUTDOWN_TIMEOUT" \
  edit $B/kustomization.yaml 's.replace("BATON_SHUTDOWN_TIMEOUT=20s", "BATON_SHUTDOWN_TIMEOUT=45s")'
case_ "no preStop pause" "policy dev" "no preStop pause" \
  edit $B/services/projector.yaml 's.replace(/          lifecycle:\n[\s\S]*?sleep: \{seconds: 5\}\n/, "")'
case_ "topic without KafkaTopic" "policy dev" "uses topic saga.replies, which has no KafkaTopic" \
  edit $B/deps/topics.yaml 's.replace("topicName: saga.replies", "topicName: saga.replies.old")'
case_ "prod with one replica" "policy prod+canary" "this overlay needs 2" \
  edit k8s/overlays/prod/kustomization.yaml 's.replace("path: /spec/minReplicaCount, value: 2", "path: /spec/minReplicaCount, value: 1")'
case_ "prod without anti-affinity" "policy prod+canary" "no required pod anti-affinity" \
  edit k8s/overlays/prod/kustomization.yaml 's.replace("requiredDuringSchedulingIgnoredDuringExecution", "preferredDuringSchedulingIgnoredDuringExecution")'

wait
pass=0 fails=0
for ((i = 1; i <= n; i++)); do
  cat "$WORK/$i.result"
  if grep -q '^ok ' "$WORK/$i.result"; then pass=$((pass + 1)); else fails=$((fails + 1)); fi
done
echo "selftest: $pass of $n broken copies caught by the check meant to catch them, $fails not"
[[ $fails -eq 0 ]]
