// Reads a JSON array of Kubernetes objects on stdin and validates each prometheus-operator object
// (ServiceMonitor, PrometheusRule) against the schema generated from the operator's Go types.
// Prints one line per object; exits 1 if any is invalid, 2 if an object's kind is not handled.
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = { PrometheusRule, ServiceMonitor };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let status = 0;
for (const object of JSON.parse(Buffer.concat(chunks).toString("utf8"))) {
  const Model = models[object.kind];
  if (!Model) {
    console.log(`UNKNOWN ${object.kind}`);
    status = Math.max(status, 2);
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`VALID ${object.kind}/${object.metadata.name}`);
  } catch (error) {
    console.log(`INVALID ${object.kind}/${object.metadata.name}: ${error.message}`);
    status = Math.max(status, 1);
  }
}
process.exit(status);
