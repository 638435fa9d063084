// Reads a JSON array of Kubernetes resources on stdin and validates each Prometheus
// Operator resource (monitoring.coreos.com/v1) against its CRD's OpenAPI schema, with the
// validators of @kubernetes-models/prometheus-operator. Prints one JSON line per resource:
// {"kind", "name", "ok", "error"}; exits 1 when any is invalid or of an unknown kind.
import { readFileSync } from "node:fs";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";

const MODELS = { PrometheusRule, ServiceMonitor, PodMonitor };
const resources = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const resource of resources) {
  const name = resource?.metadata?.name ?? "?";
  const Model = resource.apiVersion === "monitoring.coreos.com/v1" ? MODELS[resource.kind] : undefined;
  let error = null;
  if (!Model) {
    error = `no schema for ${resource.apiVersion} ${resource.kind}`;
  } else {
    try {
      new Model(resource).validate();
    } catch (exception) {
      error = String(exception.message ?? exception);
    }
  }
  failed ||= error !== null;
  console.log(JSON.stringify({ kind: resource.kind, name, ok: error === null, error }));
}
process.exit(failed ? 1 : 0);
