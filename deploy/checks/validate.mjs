// Validates every object of kustomize build outputs (multi-document YAML files given as
// arguments) against a real schema, and fails on an object it has no schema for:
//  - core and Gateway API / KEDA / prometheus-operator objects: the kubernetes-models
//    validators (OpenAPI of Kubernetes and of those projects' CRDs);
//  - Strimzi, CloudNativePG and KEDA custom resources: their CRDs' openAPIV3Schema
//    (crds/, copied from the operators' repositories) with ajv. Like the API server's
//    strict field validation, a field the schema does not declare is an error (the
//    structural schema would silently prune it; in a manifest it is always a mistake).
// Usage: node validate.mjs OUTPUT.yaml...
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import yaml from "js-yaml";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import standaloneCode from "ajv/dist/standalone/index.js";
import { _ } from "ajv/dist/compile/codegen/index.js";
import crypto from "node:crypto";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

// Objects validated with kubernetes-models: apiVersion -> module that exports the kinds.
const modelModules = {
  "v1": "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "autoscaling/v2": "kubernetes-models/autoscaling/v2",
  "networking.k8s.io/v1": "kubernetes-models/networking.k8s.io/v1",
  "gateway.networking.k8s.io/v1": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
};

// Kubernetes' formats that ajv-formats does not know: accepted as declared types.
const k8sFormats = ["int32", "int64", "float", "double", "byte", "binary", "password",
  "int-or-string", "quantity", "duration", "date-time", "uri", "hostname", "ipv4", "ipv6"];

function strict(schema) {
  if (Array.isArray(schema)) return schema.map(strict);
  if (!schema || typeof schema !== "object") return schema;
  const out = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k === "properties" || k === "patternProperties" || k === "definitions") {
      out[k] = Object.fromEntries(Object.entries(v).map(([n, s]) => [n, strict(s)]));
    } else if (k === "default" || k === "example" || k === "enum") {
      out[k] = v;
    } else {
      out[k] = strict(v);
    }
  }
  if (out["x-kubernetes-int-or-string"]) {
    delete out.type;
    if (!out.anyOf) out.anyOf = [{ type: "integer" }, { type: "string" }];
  }
  if (out.properties && out.additionalProperties === undefined &&
      !out["x-kubernetes-preserve-unknown-fields"]) {
    out.additionalProperties = false;
  }
  if (out.nullable) {
    delete out.nullable;
    if (typeof out.type === "string") out.type = [out.type, "null"];
  }
  return out;
}

// Compiling the CRDs' schemas takes seconds (CloudNativePG's alone is 470 KB), so the
// compiled validators are cached as ajv standalone code in node_modules/.cache, keyed by a
// hash of the CRD files and of this script.
function loadCrds() {
  const crdDir = path.join(here, "crds");
  const files = fs.readdirSync(crdDir).filter((f) => f.endsWith(".yaml")).sort();
  const hash = crypto.createHash("sha256");
  hash.update(fs.readFileSync(fileURLToPath(import.meta.url)));
  for (const f of files) hash.update(f).update(fs.readFileSync(path.join(crdDir, f)));
  const cacheDir = path.join(here, "node_modules", ".cache");
  const cache = path.join(cacheDir, `baton-crds-${hash.digest("hex").slice(0, 16)}.cjs`);
  const meta = new Map();
  const schemas = [];
  for (const file of files) {
    for (const crd of yaml.loadAll(fs.readFileSync(path.join(crdDir, file), "utf8"))) {
      if (!crd || crd.kind !== "CustomResourceDefinition") continue;
      for (const v of crd.spec.versions) {
        const key = `${crd.spec.group}/${v.name}:${crd.spec.names.kind}`;
        meta.set(key, { served: v.served, file });
        if (!fs.existsSync(cache)) {
          const schema = strict(v.schema.openAPIV3Schema);
          // metadata is the API server's; the CRD schema only says "object".
          schema.properties.metadata = { type: "object" };
          schema.properties.apiVersion = { type: "string" };
          schema.properties.kind = { type: "string" };
          schemas.push([key, schema]);
        }
      }
    }
  }
  if (!fs.existsSync(cache)) {
    const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: true,
      code: { source: true, formats: _`require("ajv-formats/dist/formats").fullFormats` } });
    addFormats(ajv);
    for (const f of k8sFormats) if (!ajv.formats[f]) ajv.addFormat(f, true);
    for (const [key, schema] of schemas) ajv.addSchema(schema, key);
    fs.mkdirSync(cacheDir, { recursive: true });
    fs.writeFileSync(`${cache}.${process.pid}.tmp`, standaloneCode(ajv));
    fs.renameSync(`${cache}.${process.pid}.tmp`, cache);
  }
  const compiled = require(cache);
  const validators = new Map();
  for (const [key, m] of meta) validators.set(key, { ...m, validate: compiled[key] });
  return validators;
}

function describe(o) {
  return `${o?.kind ?? "?"} ${o?.metadata?.namespace ? o.metadata.namespace + "/" : ""}${o?.metadata?.name ?? "?"}`;
}

const crds = loadCrds();
let failures = 0, checked = 0;
const fail = (where, msg) => { failures++; console.error(`validate: ${where}: ${msg}`); };

for (const file of process.argv.slice(2)) {
  const docs = yaml.loadAll(fs.readFileSync(file, "utf8")).filter(Boolean);
  for (const o of docs) {
    const where = `${path.basename(path.dirname(file)) || file}/${path.basename(file)}: ${describe(o)}`;
    const key = `${o.apiVersion}:${o.kind}`;
    let validated = false;
    const crd = crds.get(key);
    if (crd) {
      if (!crd.served) fail(where, `${o.apiVersion} is not served by the CRD in ${crd.file}`);
      if (!crd.validate(o)) {
        for (const e of crd.validate.errors) {
          const extra = e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : "";
          fail(where, `${e.instancePath || "/"} ${e.message}${extra} [CRD ${crd.file}]`);
        }
      }
      validated = true;
    }
    // kustomize writes long base64 values over several lines; the API server's base64
    // decoder (Go) skips the newlines, so the schema's "byte" format is checked without them.
    for (const field of o.kind === "Secret" ? ["data"] : o.kind === "ConfigMap" ? ["binaryData"] : []) {
      for (const k of Object.keys(o[field] ?? {})) o[field][k] = String(o[field][k]).replace(/[\r\n]/g, "");
    }
    const mod = modelModules[o.apiVersion];
    if (mod) {
      const Kind = require(mod)[o.kind];
      if (Kind) {
        try { new Kind(o).validate(); } catch (e) { fail(where, `${e.message} [kubernetes-models ${mod}]`); }
        validated = true;
      }
    }
    if (!validated) fail(where, `no schema for ${key}: add its CRD to deploy/checks/crds/ or a kubernetes-models package`);
    checked++;
  }
}
console.log(`validate: ${checked} objects checked, ${failures} error(s)`);
process.exit(failures ? 1 : 0);
