// The deploy/k8s tests (run by k8s_test.sh, which renders the manifests and
// installs the npm packages first):
//
//   node k8s_test.mjs schema               --node-modules NM --rendered DIR
//   node k8s_test.mjs schema-negative      --node-modules NM --deploy DEPLOY_DIR --work DIR
//   node k8s_test.mjs consistency          --node-modules NM --rendered DIR --root ROOT
//                                          --help ternd=FILE --help tern-agent=FILE
//   node k8s_test.mjs consistency-negative (the same arguments)
//
// schema: every object of every rendered file validates against the
// Kubernetes (and Prometheus Operator, cert-manager) schemas, unknown fields
// included. consistency: k8s_checks.mjs's checks against the binaries' --help
// texts and the images docker/ builds. The -negative modes break a copy on
// purpose, once per check, and pass only when the check reports each
// breakage. Prints PASS or the failures; exit 0 or 1.
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import {
  consistencyErrors, describe, loadModels, parseHelp, parseManifests, plainValidation,
  readManifests, schemaErrors,
} from "./k8s_checks.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const opts = { mode: argv[0], help: new Map() };
  for (let i = 1; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key} needs a value`);
    if (key === "--help") {
      const eq = value.indexOf("=");
      opts.help.set(value.slice(0, eq), value.slice(eq + 1));
    } else {
      opts[key.replace(/^--/, "").replace(/-(\w)/g, (_, c) => c.toUpperCase())] = value;
    }
  }
  return opts;
}

function renderedFiles(dir) {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort();
  if (files.length === 0) throw new Error(`no rendered manifests in ${dir}`);
  return files.map((f) => path.join(dir, f));
}

let failures = 0;
function fail(message) {
  console.log(`FAIL: ${message}`);
  ++failures;
}

// --- schema -------------------------------------------------------------------

async function schema(opts) {
  const models = loadModels(opts.nodeModules);
  for (const file of renderedFiles(opts.rendered)) {
    const objects = readManifests(models, file);
    const errors = await schemaErrors(models, objects);
    errors.forEach(fail);
    const kinds = [...new Set(objects.map(({ obj }) => obj.kind))].sort().join(", ");
    console.log(`${path.basename(file)}: ${objects.length} objects (${kinds}), ${errors.length} schema errors`);
  }
}

// A copy of deploy/ (k8s and the Grafana component it uses) with `breaks`
// applied: [file, from, to], each `from` found exactly once.
function brokenCopy(deployDir, work, breaks) {
  const copy = path.join(work, "deploy");
  fs.rmSync(copy, { recursive: true, force: true });
  for (const sub of ["k8s", "grafana"]) {
    fs.cpSync(path.join(deployDir, sub), path.join(copy, sub), { recursive: true });
  }
  for (const [file, from, to] of breaks) {
    const p = path.join(copy, file);
    const text = fs.readFileSync(p, "utf8");
    const count = text.split(from).length - 1;
    if (count !== 1) throw new Error(`breakage of ${file}: "${from}" occurs ${count} times, not once`);
    fs.writeFileSync(p, text.replace(from, to));
  }
  return copy;
}

function render(k8sDir, out) {
  const r = spawnSync("bash", [path.join(here, "render.sh"), k8sDir, out], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`render.sh ${k8sDir}: exit ${r.status}\n${r.stdout}${r.stderr}`);
}

async function schemaNegative(opts) {
  const models = loadModels(opts.nodeModules);
  // Each breakage and the message that must name it, in the given render.
  const cases = [
    { name: "a misspelt field kubernetes-models accepts (Service selectr:)",
      break: ["k8s/base/ternd.yaml", "spec:\n  selector:\n    app.kubernetes.io/name: ternd\n  ports:",
              "spec:\n  selectr:\n    app.kubernetes.io/name: ternd\n  ports:"],
      render: "cpu", object: "Service tern/ternd", expect: /unknown field spec\.selectr\b/ },
    { name: "a misspelt field deep in a pod template",
      break: ["k8s/base/agent.yaml", "imagePullPolicy: IfNotPresent", "imagePullPolcy: IfNotPresent"],
      render: "gpu", object: "DaemonSet tern/tern-agent",
      expect: /unknown field spec\.template\.spec\.containers\[0\]\.imagePullPolcy\b/ },
    { name: "a wrong type",
      break: ["k8s/base/ternd.yaml", "replicas: 1", "replicas: one"],
      render: "cpu", object: "Deployment tern/ternd", expect: /data\/spec\/replicas must be integer/ },
    { name: "a missing required field",
      break: ["k8s/base/agent.yaml", "              containerPort: 9465\n", ""],
      render: "cpu", object: "Deployment tern/tern-agent",
      expect: /must have required property '?containerPort\b/ },
    { name: "a misspelt field in a Prometheus Operator object",
      break: ["k8s/components/prometheus-operator/monitors.yaml", "      honorLabels: true\n---",
              "      honourLabels: true\n---"],
      render: "cpu+prometheus-operator", object: "ServiceMonitor tern/ternd",
      expect: /unknown field spec\.endpoints\[0\]\.honourLabels\b/ },
    { name: "a misspelt field in a cert-manager object",
      break: ["k8s/components/mtls/certificate.yaml", "  renewBefore: 720h", "  renewBefor: 720h"],
      render: "gpu+mtls", object: "Certificate tern/ternd-tls", expect: /unknown field spec\.renewBefor\b/ },
    { name: "an API version Kubernetes does not serve",
      break: ["k8s/base/network-policy.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: ternd",
              "apiVersion: networking.k8s.io/v2\nkind: NetworkPolicy\nmetadata:\n  name: ternd"],
      render: "cpu", object: "NetworkPolicy tern/ternd", expect: /no schema for apiVersion networking\.k8s\.io\/v2/ },
  ];
  const copy = brokenCopy(opts.deploy, opts.work, cases.map((c) => c.break));
  const out = path.join(opts.work, "rendered-broken");
  render(path.join(copy, "k8s"), out);
  for (const c of cases) {
    const objects = readManifests(models, path.join(out, `${c.render}.yaml`));
    const errors = (await schemaErrors(models, objects)).filter((e) => e.includes(`: ${c.object}: `));
    if (errors.some((e) => c.expect.test(e))) console.log(`rejected ${c.name}: ${errors.find((e) => c.expect.test(e))}`);
    else fail(`${c.name} (${c.break[0]}) was not rejected; errors on ${c.object}: ${errors.join("; ") || "none"}`);
  }
  // The first breakage passes kubernetes-models' own validate(): the strict
  // walk is what rejects it.
  const service = readManifests(models, path.join(out, "cpu.yaml"))
      .find(({ obj }) => describe(obj) === "Service tern/ternd").obj;
  const plain = await plainValidation(models, service);
  if (plain === null) console.log("kubernetes-models' validate() alone accepts the Service with selectr: (as expected)");
  else fail(`kubernetes-models' validate() now rejects selectr: itself (${plain}); the note in k8s_checks.mjs is stale`);
}

// --- consistency ----------------------------------------------------------------

// What docker/ builds: each Dockerfile's image title (OCI label) is an image
// name; scripts/image.sh's localhost/<name>:dev references are the local tags;
// the runtime stage's ENTRYPOINT.
function imagesOf(root) {
  const names = [];
  let entrypoint = null;
  const dockerDir = path.join(root, "docker");
  const dockerfiles = fs.existsSync(dockerDir)
      ? fs.readdirSync(dockerDir).filter((f) => /^Dockerfile(\.[\w-]+)?$/.test(f) && !f.endsWith(".dockerignore")).sort() : [];
  for (const f of dockerfiles) {
    const text = fs.readFileSync(path.join(dockerDir, f), "utf8");
    const title = /org\.opencontainers\.image\.title="([^"]+)"/.exec(text);
    if (title) names.push(title[1]);
    const ep = [...text.matchAll(/^ENTRYPOINT\s+(.+)$/gm)].pop();
    if (f === "Dockerfile" && ep) entrypoint = ep[1].trim();
  }
  if (names.length === 0) throw new Error(`no image titles (org.opencontainers.image.title) in ${dockerDir}/Dockerfile*`);
  const script = path.join(root, "scripts", "image.sh");
  const exact = fs.existsSync(script)
      ? [...new Set([...fs.readFileSync(script, "utf8").matchAll(/localhost\/([a-z0-9-]+):dev\b/g)]
            .filter((m) => names.includes(m[1])).map((m) => m[0]))] : [];
  return { names, entrypoint, exact, dockerfiles };
}

function helpOf(opts) {
  const help = new Map();
  for (const [name, file] of opts.help) help.set(name, parseHelp(fs.readFileSync(file, "utf8")));
  for (const name of ["ternd", "tern-agent"]) {
    if (!help.has(name) || help.get(name).size < 5) throw new Error(`no usable --help text for ${name}`);
  }
  return { help };
}

// Images: every render uses an image docker/ builds; the cpu overlay (local
// clusters, podman kube play) exactly what scripts/image.sh tags.
function imagesFor(file, images) {
  return { ...images, exact: path.basename(file).startsWith("cpu") ? images.exact : null };
}

async function consistency(opts) {
  const models = loadModels(opts.nodeModules);
  const binaries = helpOf(opts);
  const images = imagesOf(opts.root);
  const ternd = binaries.help.get("ternd");
  console.log(`ternd --help: ${ternd.size} flags, rendezvous ports ${ternd.get("--rendezvous-port-min")}-${ternd.get("--rendezvous-port-max")} by default; ` +
              `tern-agent --help: ${binaries.help.get("tern-agent").size} flags`);
  console.log(`images docker/ builds: ${images.names.join(", ")} (${images.dockerfiles.join(", ")}); local tags: ${images.exact.join(", ") || "none"}; entrypoint ${images.entrypoint ?? "none"}`);
  for (const file of renderedFiles(opts.rendered)) {
    const objects = readManifests(models, file);
    const errors = consistencyErrors(objects, binaries, imagesFor(file, images));
    errors.forEach((e) => fail(`${path.basename(file)}: ${e}`));
    console.log(`${path.basename(file)}: ${errors.length} consistency errors`);
  }
}

// Each mutation of a good render, and the message a check must then give.
function mutations() {
  const pod = (objects, kind, name) => objects.find(({ obj }) => obj.kind === kind && obj.metadata.name === name).obj;
  const ternd = (o) => pod(o, "Deployment", "ternd").spec.template.spec;
  const agentKind = (o) => o.some(({ obj }) => obj.kind === "DaemonSet") ? "DaemonSet" : "Deployment";
  const agent = (o) => pod(o, agentKind(o), "tern-agent").spec.template.spec;
  const args = (spec) => spec.containers[0].args;
  const setArg = (spec, flag, value) => {
    const a = args(spec);
    const i = a.findIndex((x) => x.startsWith(`${flag}=`));
    if (value === null) a.splice(i, 1); else if (i < 0) a.push(`${flag}=${value}`); else a[i] = `${flag}=${value}`;
  };
  const volume = (spec, name) => spec.volumes.find((v) => v.name === name);
  const policy = (o, name) => pod(o, "NetworkPolicy", name);
  return [
    ["Service selecting no pod", "cpu", (o) => { pod(o, "Service", "ternd").spec.selector["app.kubernetes.io/name"] = "terndd"; },
     /Service tern\/ternd: selector .* selects no pod/],
    ["Service targetPort that no container has", "cpu", (o) => { pod(o, "Service", "ternd").spec.ports[1].targetPort = "metric"; },
     /Service tern\/ternd: port metrics: targetPort metric is no container port/],
    ["workload selector missing its template", "cpu", (o) => { pod(o, "Deployment", "ternd").spec.selector.matchLabels["app.kubernetes.io/name"] = "x"; },
     /Deployment tern\/ternd: spec.selector does not select its own pod template/],
    ["PodDisruptionBudget selecting no pod", "cpu", (o) => { pod(o, "PodDisruptionBudget", "tern-agent").spec.selector.matchLabels["app.kubernetes.io/name"] = "agent"; },
     /PodDisruptionBudget tern\/tern-agent: selector selects no pod/],
    ["PodMonitor on a port the agents lack", "cpu+prometheus-operator", (o) => { pod(o, "PodMonitor", "tern-agent").spec.podMetricsEndpoints[0].port = "metric"; },
     /PodMonitor port metric is no container port/],
    ["ServiceMonitor on a port the Service lacks", "cpu+prometheus-operator", (o) => { pod(o, "ServiceMonitor", "ternd").spec.endpoints[0].port = "grpcc"; },
     /ServiceMonitor port grpcc is no port of Service tern\/ternd/],
    ["NetworkPolicy on a named port no pod has", "cpu", (o) => { policy(o, "ternd").spec.ingress[0].ports[0].port = "gprc"; },
     /NetworkPolicy tern\/ternd: port gprc is no named container port/],
    ["flag the binary does not have", "cpu", (o) => { args(ternd(o)).push("--quota-fil=/etc/tern/quotas/quotas"); },
     /container ternd: unknown flag --quota-fil \(not in ternd --help\)/],
    ["flag of the other binary", "gpu", (o) => { args(agent(o)).push("--lease-ttl=15s"); },
     /container tern-agent: unknown flag --lease-ttl \(not in tern-agent --help\)/],
    ["$(VAR) naming no environment variable", "cpu", (o) => { setArg(agent(o), "--host", "$(POD_IPP)"); },
     /\$\(POD_IPP\) in the arguments names no environment variable/],
    ["daemon listening on loopback", "cpu", (o) => { setArg(ternd(o), "--listen", "127.0.0.1:7070"); },
     /--listen 127.0.0.1:7070 listens on loopback only/],
    ["listen address left at the binary's loopback default", "cpu", (o) => { setArg(agent(o), "--metrics-listen", null); },
     /container tern-agent: --metrics-listen 127.0.0.1:9465 listens on loopback only/],
    ["containerPort the process does not listen on", "cpu", (o) => { ternd(o).containers[0].ports[1].containerPort = 9465; },
     /containerPort 9465 \(metrics\) is no port ternd listens on/],
    ["gRPC probe on another port", "cpu", (o) => { ternd(o).containers[0].livenessProbe.grpc.port = 7071; },
     /livenessProbe speaks gRPC to port 7071, but ternd serves gRPC on 0.0.0.0:7070/],
    ["HTTP probe on the gRPC port", "cpu", (o) => { agent(o).containers[0].livenessProbe.httpGet.port = 7070; },
     /livenessProbe GETs port 7070, but tern-agent serves HTTP/],
    ["scrape annotation on the wrong port", "cpu", (o) => { pod(o, "Deployment", "ternd").spec.template.metadata.annotations["prometheus.io/port"] = "9465"; },
     /prometheus.io\/port 9465 is not --metrics-listen's port 9464/],
    ["ConfigMap that is not rendered", "cpu", (o) => { volume(ternd(o), "quotas").configMap.name = "tern-quota"; },
     /volume quotas names ConfigMap tern-quota, which is not in the render/],
    ["Secret that is not rendered", "gpu+mtls", (o) => { volume(ternd(o), "tls").secret.secretName = "ternd-tsl"; },
     /volume tls names Secret ternd-tsl, which is not in the render/],
    ["PersistentVolumeClaim that is not rendered", "gpu", (o) => { volume(agent(o), "shared").persistentVolumeClaim.claimName = "tern-share"; },
     /names PersistentVolumeClaim tern-share, which is not in the render/],
    ["ServiceAccount that is not rendered", "cpu", (o) => { ternd(o).serviceAccountName = "tern"; },
     /ServiceAccount tern is not in the render/],
    ["mount of a volume the pod lacks", "cpu", (o) => { ternd(o).containers[0].volumeMounts[0].name = "stor"; },
     /mounts stor, which is no volume of the pod/],
    ["file flag naming no key of its ConfigMap", "cpu", (o) => { setArg(ternd(o), "--quota-file", "/etc/tern/quotas/quota"); },
     /--quota-file \/etc\/tern\/quotas\/quota: quota is no key of volume quotas/],
    ["file flag naming no key of its Secret", "gpu+mtls", (o) => { setArg(ternd(o), "--tls-key", "/etc/tern/tls/tls.pem"); },
     /--tls-key \/etc\/tern\/tls\/tls.pem: tls.pem is no key of volume tls/],
    ["store on the read-only root file system", "cpu", (o) => { setArg(ternd(o), "--db", "/var/lib/ternd/ternd.db"); },
     /--db \/var\/lib\/ternd\/ternd.db is on no volume/],
    ["store left at the binary's relative default", "cpu", (o) => { setArg(ternd(o), "--db", null); },
     /--db .\/ternd.db is relative to the working directory/],
    ["writable directory on a read-only volume", "cpu", (o) => { setArg(ternd(o), "--checkpoint-root", "/etc/tern/quotas/checkpoints"); },
     /--checkpoint-root \/etc\/tern\/quotas\/checkpoints must be writable/],
    ["grace period shorter than the agent's drain", "gpu", (o) => { agent(o).terminationGracePeriodSeconds = 20; },
     /terminationGracePeriodSeconds 20 leaves less than 10 s above --shutdown-grace 20/],
    ["drain longer than the grace period", "cpu", (o) => { setArg(agent(o), "--shutdown-grace", "55"); },
     /terminationGracePeriodSeconds 60 leaves less than 10 s above --shutdown-grace 55/],
    ["CUDA slots without as many GPUs", "gpu", (o) => { agent(o).containers[0].resources.limits["nvidia.com/gpu"] = 2; },
     /--cuda-slots 1 but the container's nvidia.com\/gpu limit is 2/],
    ["CPU slots beyond the CPU limit", "cpu", (o) => { agent(o).containers[0].env.find((e) => e.name === "OMP_NUM_THREADS").value = "2"; },
     /2 CPU slots × OMP_NUM_THREADS 2 exceed the CPU limit 2/],
    ["rendezvous range the NetworkPolicy does not admit", "cpu", (o) => { policy(o, "tern-agent").spec.ingress[0].ports[0].port += 1; },
     /no NetworkPolicy admits ternd's rendezvous ports/],
    ["ternd handing out ports outside the admitted range", "gpu", (o) => { setArg(ternd(o), "--rendezvous-port-min", "20000"); setArg(ternd(o), "--rendezvous-port-max", "20499"); },
     /no NetworkPolicy admits ternd's rendezvous ports 20000-20499/],
    ["agents open to each other on every port", "cpu", (o) => { delete policy(o, "tern-agent").spec.ingress[0].ports; },
     /admits all ports from agent pods/],
    ["an extra port range between agents", "cpu", (o) => { policy(o, "tern-agent").spec.ingress[0].ports.push({ port: 8000, endPort: 8100, protocol: "TCP" }); },
     /admits ports 8000-8100 from agent pods/],
    ["kernel port range not set", "cpu", (o) => { delete agent(o).securityContext.sysctls; },
     /sets no net.ipv4.ip_local_port_range/],
    ["kernel port range overlapping the rendezvous range", "cpu", (o) => { agent(o).securityContext.sysctls[0].value = "20000 60999"; },
     /overlaps ternd's rendezvous range/],
    ["writable root file system", "cpu", (o) => { ternd(o).containers[0].securityContext.readOnlyRootFilesystem = false; },
     /container ternd: readOnlyRootFilesystem is not true/],
    ["capabilities kept", "gpu", (o) => { agent(o).containers[0].securityContext.capabilities.drop = ["NET_RAW"]; },
     /capabilities do not drop ALL/],
    ["privilege escalation allowed", "cpu", (o) => { delete agent(o).containers[0].securityContext.allowPrivilegeEscalation; },
     /allowPrivilegeEscalation is not false/],
    ["root allowed", "cpu", (o) => { delete ternd(o).securityContext.runAsNonRoot; },
     /runAsNonRoot is not true/],
    ["no seccomp profile", "gpu", (o) => { delete agent(o).securityContext.seccompProfile; },
     /seccompProfile is not RuntimeDefault/],
    ["no memory limit", "cpu", (o) => { delete ternd(o).containers[0].resources.limits.memory; },
     /no memory in resources.limits/],
    ["namespace without Pod Security enforcement", "cpu", (o) => { delete pod(o, "Namespace", "tern").metadata.labels["pod-security.kubernetes.io/enforce"]; },
     /Namespace tern: does not enforce the restricted Pod Security Standard/],
    ["image docker/ does not build", "gpu", (o) => { agent(o).containers[0].image = "registry.example/tern-gpu:1.0"; },
     /image registry.example\/tern-gpu:1.0 is none of the images docker\/ builds/],
    ["local image scripts/image.sh does not tag", "cpu", (o) => { ternd(o).containers[0].image = "localhost/tern:latest"; },
     /image localhost\/tern:latest is not what scripts\/image.sh tags/],
    ["image without a tag", "gpu", (o) => { ternd(o).containers[0].image = "tern"; },
     /image tern has no tag/],
    ["command replacing the image's entrypoint", "cpu", (o) => { ternd(o).containers[0].command = ["ternd"]; },
     /sets command, which replaces the image's entrypoint/],
    ["a container running something else", "cpu", (o) => { ternd(o).containers[0].args[0] = "sqlite3"; },
     /runs sqlite3, not a tern binary/],
  ];
}

async function consistencyNegative(opts) {
  const models = loadModels(opts.nodeModules);
  const binaries = helpOf(opts);
  const images = imagesOf(opts.root);
  const texts = new Map();
  for (const file of renderedFiles(opts.rendered)) texts.set(path.basename(file, ".yaml"), fs.readFileSync(file, "utf8"));
  for (const [name, render, mutate, expect] of mutations()) {
    if (!texts.has(render)) throw new Error(`no render ${render}`);
    const file = `${render}.yaml`;
    const errorsOf = (objects) => consistencyErrors(objects, binaries, imagesFor(file, images));
    const before = new Set(errorsOf(parseManifests(models, texts.get(render), file)));
    const broken = parseManifests(models, texts.get(render), file);
    mutate(broken);
    const after = errorsOf(broken).filter((e) => !before.has(e));
    const hit = after.find((e) => expect.test(e));
    if (hit) console.log(`rejected ${name} (${render}): ${hit}`);
    else fail(`${name} (${render}) was not rejected; new errors: ${after.join("; ") || "none"}`);
  }
}

// --- main -------------------------------------------------------------------------

const opts = parseArgs(process.argv.slice(2));
const modes = { schema, "schema-negative": schemaNegative, consistency, "consistency-negative": consistencyNegative };
if (!modes[opts.mode]) {
  console.error(`usage: node k8s_test.mjs ${Object.keys(modes).join("|")} OPTIONS`);
  process.exit(2);
}
try {
  await modes[opts.mode](opts);
} catch (e) {
  fail(e.stack ?? String(e));
}
console.log(failures === 0 ? "PASS" : `${failures} failure(s)`);
process.exit(failures === 0 ? 0 : 1);
