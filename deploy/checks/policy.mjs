// The deploy policy, over kustomize build outputs: what every baton Deployment must have to be
// applied. Each rule names the object and what is missing, so a failure reads as a fix.
// Usage: node policy.mjs [--min-replicas N] [--anti-affinity] OUTPUT.yaml...
//   --min-replicas N   each Deployment (but canaries, label baton.dev/track=canary) must run
//                      at least N replicas: spec.replicas, or its HPA's / ScaledObject's minimum
//   --anti-affinity    each such Deployment needs a required pod anti-affinity on the hostname
import fs from "node:fs";
import path from "node:path";
import yaml from "js-yaml";

const args = process.argv.slice(2);
let minReplicas = 0, antiAffinity = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--min-replicas") minReplicas = Number(args[++i]);
  else if (args[i] === "--anti-affinity") antiAffinity = true;
  else files.push(args[i]);
}

let failures = 0;
const fail = (where, msg) => { failures++; console.error(`policy: ${where}: ${msg}`); };

function selects(selector, labels) {
  if (!selector) return false;
  const ml = selector.matchLabels ?? {}, me = selector.matchExpressions ?? [];
  if (Object.keys(ml).length === 0 && me.length === 0) return true;
  for (const [k, v] of Object.entries(ml)) if (labels[k] !== v) return false;
  for (const e of me) {
    const has = Object.hasOwn(labels, e.key);
    if (e.operator === "In" && !(has && e.values.includes(labels[e.key]))) return false;
    if (e.operator === "NotIn" && has && e.values.includes(labels[e.key])) return false;
    if (e.operator === "Exists" && !has) return false;
    if (e.operator === "DoesNotExist" && has) return false;
  }
  return true;
}
const isEmptySelector = (s) => !s || (Object.keys(s.matchLabels ?? {}).length === 0 && (s.matchExpressions ?? []).length === 0);

// Durations as common/config.c parses them: an integer with ms, s, m or h (plain: ms).
function durationSeconds(v) {
  const m = /^(\d+)\s*(ms|s|m|h)?$/i.exec(String(v).trim());
  if (!m) return NaN;
  const mult = { ms: 0.001, s: 1, m: 60, h: 3600 }[(m[2] ?? "ms").toLowerCase()];
  return Number(m[1]) * mult;
}
// BATON_SHUTDOWN_TIMEOUT as the container sees it: env first, then envFrom ConfigMaps; 10s
// (the service's default) when unset.
function shutdownTimeout(c, configMaps) {
  const e = (c.env ?? []).find((x) => x.name === "BATON_SHUTDOWN_TIMEOUT");
  if (e && e.value !== undefined) return durationSeconds(e.value);
  let v;
  for (const ef of c.envFrom ?? []) {
    const cm = ef.configMapRef && configMaps.get(ef.configMapRef.name);
    if (cm && cm.data?.BATON_SHUTDOWN_TIMEOUT !== undefined) v = cm.data.BATON_SHUTDOWN_TIMEOUT;
  }
  return v === undefined ? 10 : durationSeconds(v);
}

function imageTag(image) {
  if (image.includes("@sha256:")) return "digest";
  const last = image.split("/").pop();
  return last.includes(":") ? last.split(":").pop() : "";
}

function checkImages(where, podSpec) {
  for (const c of [...(podSpec.initContainers ?? []), ...(podSpec.containers ?? [])]) {
    const tag = imageTag(c.image ?? "");
    if (tag === "latest") fail(where, `container ${c.name}: image ${c.image} uses the tag "latest"; pin a version`);
    else if (tag === "") fail(where, `container ${c.name}: image ${c.image} has no tag (that means latest); pin a version`);
  }
}

function checkOutput(file) {
  const label = path.basename(path.dirname(file)) + "/" + path.basename(file);
  const objs = yaml.loadAll(fs.readFileSync(file, "utf8")).filter(Boolean);
  const of = (kind) => objs.filter((o) => o.kind === kind);
  const configMaps = new Map(of("ConfigMap").map((o) => [o.metadata.name, o]));
  const pdbs = of("PodDisruptionBudget"), netpols = of("NetworkPolicy");
  const hpas = of("HorizontalPodAutoscaler"), scaled = of("ScaledObject");

  const defaultDeny = netpols.some((p) => isEmptySelector(p.spec.podSelector) &&
    ["Ingress", "Egress"].every((t) => (p.spec.policyTypes ?? []).includes(t)) &&
    !(p.spec.ingress ?? []).length && !(p.spec.egress ?? []).length);
  if (!defaultDeny) fail(label, "no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)");

  for (const w of objs.filter((o) => ["StatefulSet", "DaemonSet", "Job", "CronJob"].includes(o.kind))) {
    const spec = w.kind === "CronJob" ? w.spec.jobTemplate.spec.template.spec : w.spec.template.spec;
    checkImages(`${label}: ${w.kind} ${w.metadata.name}`, spec);
  }

  for (const d of of("Deployment")) {
    const where = `${label}: Deployment ${d.metadata.name}`;
    const tpl = d.spec.template, pod = tpl.spec, labels = tpl.metadata?.labels ?? {};
    const psc = pod.securityContext ?? {};
    checkImages(where, pod);

    if (psc.runAsUser === 0) fail(where, "pod securityContext.runAsUser is 0 (root)");
    const podSeccomp = psc.seccompProfile?.type;
    if (!(pod.topologySpreadConstraints ?? []).length) fail(where, "no topologySpreadConstraints");

    const tmpVolumes = new Set((pod.volumes ?? []).filter((v) => v.emptyDir).map((v) => v.name));
    for (const c of pod.containers ?? []) {
      const cw = `${where}: container ${c.name}`;
      const sc = c.securityContext ?? {};
      // The three probes, on the endpoints every baton service serves.
      if (!c.startupProbe) fail(cw, "no startupProbe");
      if (c.livenessProbe?.httpGet?.path !== "/healthz") fail(cw, "no livenessProbe on GET /healthz");
      if (c.readinessProbe?.httpGet?.path !== "/readyz") fail(cw, "no readinessProbe on GET /readyz");
      for (const r of ["cpu", "memory"]) {
        if (!c.resources?.limits?.[r]) fail(cw, `no resources.limits.${r}`);
        if (!c.resources?.requests?.[r]) fail(cw, `no resources.requests.${r}`);
      }
      const nonRoot = sc.runAsNonRoot ?? psc.runAsNonRoot;
      if (nonRoot !== true) fail(cw, "runAsNonRoot is not true (pod or container securityContext)");
      if (sc.runAsUser === 0) fail(cw, "securityContext.runAsUser is 0 (root)");
      if (sc.readOnlyRootFilesystem !== true) fail(cw, "securityContext.readOnlyRootFilesystem is not true");
      if (sc.allowPrivilegeEscalation !== false) fail(cw, "securityContext.allowPrivilegeEscalation is not false");
      if (!(sc.capabilities?.drop ?? []).includes("ALL")) fail(cw, "securityContext.capabilities.drop lacks ALL");
      if ((sc.seccompProfile?.type ?? podSeccomp) !== "RuntimeDefault") fail(cw, "seccompProfile is not RuntimeDefault");
      if (!(c.volumeMounts ?? []).some((m) => m.mountPath === "/tmp" && tmpVolumes.has(m.name)))
        fail(cw, "no emptyDir mounted at /tmp (the root filesystem is read-only)");
      // Graceful stop: the kubelet must not SIGKILL before the pause plus the drain are over.
      const pause = c.lifecycle?.preStop?.sleep?.seconds;
      if (pause === undefined) fail(cw, "no preStop pause (lifecycle.preStop.sleep) for endpoint propagation");
      const grace = pod.terminationGracePeriodSeconds ?? 30;
      const drain = shutdownTimeout(c, configMaps);
      if (Number.isNaN(drain)) fail(cw, "BATON_SHUTDOWN_TIMEOUT is not a duration");
      else if (!(grace > drain + (pause ?? 0)))
        fail(cw, `terminationGracePeriodSeconds ${grace} is not above BATON_SHUTDOWN_TIMEOUT (${drain}s) plus the preStop pause (${pause ?? 0}s)`);
    }

    if (!pdbs.some((p) => selects(p.spec.selector, labels)))
      fail(where, "no PodDisruptionBudget selects its pods");
    if (!netpols.some((p) => !isEmptySelector(p.spec.podSelector) && selects(p.spec.podSelector, labels)))
      fail(where, "no NetworkPolicy (beyond the default deny) selects its pods");

    if (labels["baton.dev/track"] !== "canary") {
      if (minReplicas > 0) {
        const hpa = hpas.find((h) => h.spec.scaleTargetRef?.kind === "Deployment" && h.spec.scaleTargetRef.name === d.metadata.name);
        const so = scaled.find((s) => (s.spec.scaleTargetRef?.kind ?? "Deployment") === "Deployment" && s.spec.scaleTargetRef.name === d.metadata.name);
        const n = hpa ? hpa.spec.minReplicas ?? 1 : so ? so.spec.minReplicaCount ?? 0 : d.spec.replicas ?? 1;
        if (n < minReplicas) fail(where, `runs at least ${n} replica(s); this overlay needs ${minReplicas}`);
      }
      if (antiAffinity) {
        const terms = pod.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
        if (!terms.some((t) => t.topologyKey === "kubernetes.io/hostname" && selects(t.labelSelector, labels)))
          fail(where, "no required pod anti-affinity on kubernetes.io/hostname for its own pods");
      }
    }
  }

  // Every topic the definitions name has a KafkaTopic (auto-creation is off).
  const topics = new Set(of("KafkaTopic").map((t) => t.spec.topicName ?? t.metadata.name));
  for (const cm of of("ConfigMap").filter((c) => /definitions/.test(c.metadata.name))) {
    for (const [fname, text] of Object.entries(cm.data ?? {})) {
      const names = [];
      const walk = (v, key) => {
        if (Array.isArray(v)) { for (const x of v) walk(x, key === "topics" ? "topic" : key); return; }
        if (v && typeof v === "object") { for (const [k, x] of Object.entries(v)) walk(x, k); return; }
        if (typeof v === "string" && ["topic", "reply_topic", "dlq_topic"].includes(key)) names.push(v);
      };
      walk(yaml.load(text), "");
      for (const t of names) if (!topics.has(t)) fail(`${label}: ConfigMap ${cm.metadata.name}`, `${fname} uses topic ${t}, which has no KafkaTopic`);
    }
  }
  return objs.length;
}

let n = 0;
for (const f of files) n += checkOutput(f);
console.log(`policy: ${n} objects in ${files.length} output(s), ${failures} violation(s)`);
process.exit(failures ? 1 : 0);
