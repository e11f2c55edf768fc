// Checks of rendered Kubernetes manifests (tests/deploy): offline schema
// validation with kubernetes-models, strict about unknown fields, and
// consistency between the objects and with tern's own binaries.
//
//   const models = await loadModels(nodeModulesDir);
//   const objects = readManifests(models, "cpu.yaml");
//   const errors = [...await schemaErrors(models, objects),
//                   ...consistencyErrors(objects, {help, images})];
//
// Every function returns a list of messages ("<Kind> <ns>/<name>: ..."),
// empty when the objects pass.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

// --- Loading ----------------------------------------------------------------

// The npm packages installed by npm_install.sh into `nodeModules`.
export function loadModels(nodeModules) {
  if (!fs.existsSync(path.join(nodeModules, "kubernetes-models"))) {
    throw new Error(`${nodeModules} holds no kubernetes-models (run npm_install.sh)`);
  }
  const require = createRequire(path.join(nodeModules, "resolve-from-here.js"));
  return { nodeModules, YAML: require("yaml"), classes: new Map() };
}

// The objects of a multi-document YAML file, each with `file` (for messages)
// kept outside the object itself.
export function readManifests(models, file) {
  return parseManifests(models, fs.readFileSync(file, "utf8"), path.basename(file));
}

export function parseManifests(models, text, file) {
  const objects = [];
  for (const doc of models.YAML.parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0].message}`);
    const obj = doc.toJS();
    if (obj !== null && obj !== undefined) objects.push({ file, obj });
  }
  return objects;
}

export function describe(obj) {
  const ns = obj?.metadata?.namespace;
  return `${obj?.kind ?? "?"} ${ns ? ns + "/" : ""}${obj?.metadata?.name ?? "?"}`;
}

// --- Schemas ----------------------------------------------------------------

// Which package has the model of an API group.
function packageOf(group) {
  if (group === "monitoring.coreos.com") return "@kubernetes-models/prometheus-operator";
  if (group === "cert-manager.io") return "@kubernetes-models/cert-manager";
  if (group === "" || !group.includes(".") || group.endsWith(".k8s.io")) return "kubernetes-models";
  return null;
}

// The kubernetes-models class for apiVersion/kind, or null when no package
// has one (an unknown kind, or a version Kubernetes does not serve).
export async function modelClass(models, apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (models.classes.has(key)) return models.classes.get(key);
  let cls = null;
  if (typeof apiVersion === "string" && typeof kind === "string" && /^[A-Za-z0-9]+$/.test(kind)) {
    const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
    const pkg = packageOf(group);
    if (pkg) {
      const file = path.join(models.nodeModules, pkg, group, version, `${kind}.js`);
      if (fs.existsSync(file)) cls = (await import(pathToFileURL(file).href))[kind] ?? null;
    }
  }
  models.classes.set(key, cls);
  return cls;
}

// A view of `value` that records, in `seen`, the JSON path of every property
// read through it. The validators that kubernetes-models generates from the
// Kubernetes OpenAPI schemas (ajv, standalone code) read each property their
// schema defines (`data.selector !== undefined ...`) and enumerate the keys of
// maps (labels, resources), and read nothing else: a key never read is one
// the schema does not have. The packages ship these compiled validators, not
// the JSON schemas, so the schema's own code is the oracle.
function recordReads(value, at, seen) {
  if (value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof key !== "string" || !Object.prototype.hasOwnProperty.call(target, key)) return v;
      const child = `${at}/${key}`;
      seen.add(child);
      return recordReads(v, child, seen);
    },
  });
}

// JSON paths ("/spec/selectr") of the keys in `value` that are not in `seen`;
// the keys beneath an unknown one are not listed again.
function unreadKeys(value, at, seen, out) {
  if (value === null || typeof value !== "object") return out;
  for (const key of Object.keys(value)) {
    const child = `${at}/${key}`;
    if (!seen.has(child)) out.push(child);
    else unreadKeys(value[key], child, seen, out);
  }
  return out;
}

function dotted(jsonPath) {
  return jsonPath.replace(/^\//, "").replace(/\/(\d+)(?=\/|$)/g, "[$1]").replace(/\//g, ".");
}

// Schema errors of each object: its kind must have a model, the model's
// validator must accept it (types, required fields, formats), and every key
// must be one its schema defines (which the validator alone does not check:
// kubernetes-models accepts a Service with `selectr:`).
export async function schemaErrors(models, objects) {
  const errors = [];
  for (const { file, obj } of objects) {
    const where = `${file}: ${describe(obj)}`;
    const cls = await modelClass(models, obj?.apiVersion, obj?.kind);
    if (!cls) {
      errors.push(`${where}: no schema for apiVersion ${obj?.apiVersion} kind ${obj?.kind}`);
      continue;
    }
    const seen = new Set();
    try {
      cls.prototype.validate.call(recordReads(obj, "", seen));
    } catch (e) {
      errors.push(`${where}: ${e.message}`);
    }
    for (const key of unreadKeys(obj, "", seen, [])) {
      errors.push(`${where}: unknown field ${dotted(key)}`);
    }
  }
  return errors;
}

// The plain check kubernetes-models documents (`new Model(obj).validate()`),
// without the unknown-field walk: null when it passes, else its message.
export async function plainValidation(models, obj) {
  const cls = await modelClass(models, obj.apiVersion, obj.kind);
  if (!cls) return `no schema for ${obj.apiVersion} ${obj.kind}`;
  try {
    new cls(obj).validate();
    return null;
  } catch (e) {
    return e.message;
  }
}

// --- Binaries' flags (--help) -------------------------------------------------

// The flags of a CLI11 --help text: Map flag -> default (string) or null.
// An option line is "  --name TYPE[:CHECK][=DEFAULT] [(Env:VAR)]  help",
// the help perhaps on the next line; DURATION flags say "(default VALUE)" in
// their help instead.
export function parseHelp(text) {
  const flags = new Map();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; ++i) {
    const m = /^\s+(?:-[A-Za-z],)?(--[A-Za-z0-9][A-Za-z0-9-]*)(.*)$/.exec(lines[i]);
    if (!m) continue;
    const spec = /^\s(\S(?:.*?\S)?)(?:\s{2,}|$)/.exec(m[2])?.[1] ?? "";
    let def = /=([^\s=]+)(?:\s+\(Env:[^)]*\))?$/.exec(spec)?.[1] ?? null;
    if (def === null) {
      const next = lines[i + 1] ?? "";
      const help = m[2] + (/^\s{8,}\S/.test(next) && !/^\s+-/.test(next) ? " " + next : "");
      def = /\(default ([^)\s]+)\)/.exec(help)?.[1] ?? null;
    }
    flags.set(m[1], def);
  }
  return flags;
}

// --- Object helpers -----------------------------------------------------------

const WORKLOAD_KINDS = new Set(["Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"]);

function namespaceOf(obj) {
  return obj?.metadata?.namespace ?? "default";
}

// Pod templates: {obj, ns, labels, spec}.
function podTemplates(objects) {
  const pods = [];
  for (const { obj } of objects) {
    if (WORKLOAD_KINDS.has(obj.kind) && obj.spec?.template) {
      pods.push({ obj, ns: namespaceOf(obj), labels: obj.spec.template.metadata?.labels ?? {},
                  annotations: obj.spec.template.metadata?.annotations ?? {},
                  spec: obj.spec.template.spec ?? {} });
    } else if (obj.kind === "Pod") {
      pods.push({ obj, ns: namespaceOf(obj), labels: obj.metadata?.labels ?? {},
                  annotations: obj.metadata?.annotations ?? {}, spec: obj.spec ?? {} });
    }
  }
  return pods;
}

// Programs of the image (not tern's) that init containers may run.
const INIT_TOOLS = ["install"];

function containersOf(spec) {
  return [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
}

// A LabelSelector (matchLabels, matchExpressions) or a plain map (Service).
function selects(selector, labels) {
  if (!selector) return false;
  const plain = !("matchLabels" in selector) && !("matchExpressions" in selector);
  const matchLabels = plain ? selector : (selector.matchLabels ?? {});
  for (const [k, v] of Object.entries(matchLabels)) if (labels[k] !== v) return false;
  for (const e of plain ? [] : (selector.matchExpressions ?? [])) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    if (e.operator === "In" && !(has && e.values.includes(labels[e.key]))) return false;
    if (e.operator === "NotIn" && has && e.values.includes(labels[e.key])) return false;
    if (e.operator === "Exists" && !has) return false;
    if (e.operator === "DoesNotExist" && has) return false;
  }
  return true;
}

// A LabelSelector that selects every pod ({} or none).
function isEmptySelector(selector) {
  return !selector || (Object.keys(selector.matchLabels ?? {}).length === 0 &&
                       (selector.matchExpressions ?? []).length === 0);
}

function find(objects, kind, ns, name) {
  return objects.find(({ obj }) => obj.kind === kind && obj.metadata?.name === name &&
                                    namespaceOf(obj) === ns)?.obj;
}

// The command line a container runs (command, else the image's entrypoint
// with args: then args[0] is the program) and the program's name.
function argvOf(container) {
  return [...(container.command ?? []), ...(container.args ?? [])];
}

function binaryOf(container) {
  const argv0 = argvOf(container)[0];
  return argv0 ? path.posix.basename(String(argv0)) : null;
}

// The container's flags after $(VAR) expansion: Map flag -> value (the last
// one given; repeatable flags also in `all`), plus the errors found.
function containerFlags(container) {
  const env = new Map();
  for (const e of container.env ?? []) {
    env.set(e.name, e.value !== undefined ? String(e.value)
                    : e.valueFrom?.fieldRef ? `<${e.valueFrom.fieldRef.fieldPath}>` : "<from a reference>");
  }
  const errors = [];
  const expand = (s) => String(s).replace(/\$\((\w+)\)/g, (whole, name) => {
    if (!env.has(name)) {
      errors.push(`${whole} in the arguments names no environment variable of the container`);
      return whole;
    }
    return env.get(name);
  });
  const args = argvOf(container).slice(1).map(expand);
  const flags = new Map();
  const all = [];
  for (let i = 0; i < args.length; ++i) {
    const m = /^(--[A-Za-z0-9][A-Za-z0-9-]*)(?:=(.*))?$/s.exec(args[i]);
    if (!m) {
      if (args[i].startsWith("-")) errors.push(`argument ${args[i]} is not of the form --flag[=value]`);
      continue;
    }
    let value = m[2];
    if (value === undefined && i + 1 < args.length && !args[i + 1].startsWith("--")) value = args[++i];
    flags.set(m[1], value ?? "");
    all.push([m[1], value ?? ""]);
  }
  return { flags, all, env, errors };
}

// The effective value of a flag: given, else the binary's default.
function flagValue(flags, help, flag) {
  if (flags.has(flag)) return flags.get(flag);
  return help?.get(flag) ?? null;
}

function portOf(address) {
  const m = /:(\d+)$/.exec(address ?? "");
  return m ? Number(m[1]) : null;
}

function containerPortNumber(pod, container, port) {
  if (typeof port === "number") return port;
  if (/^\d+$/.test(String(port))) return Number(port);
  for (const c of pod ? containersOf(pod.spec) : [container]) {
    for (const p of c.ports ?? []) if (p.name === port) return p.containerPort;
  }
  return null;
}

function cpuQuantity(q) {
  if (q === undefined || q === null) return null;
  const s = String(q);
  return s.endsWith("m") ? Number(s.slice(0, -1)) / 1000 : Number(s);
}

// --- Consistency ----------------------------------------------------------------

// Services, monitors, budgets and policies select pods that exist, on ports
// those pods have; workloads select their own template.
function selectionErrors(objects) {
  const errors = [];
  const pods = podTemplates(objects);
  const podsIn = (ns, selector) => pods.filter((p) => p.ns === ns && selects(selector, p.labels));
  for (const { obj } of objects) {
    const where = describe(obj);
    const ns = namespaceOf(obj);
    if (WORKLOAD_KINDS.has(obj.kind) && obj.spec?.selector &&
        !selects(obj.spec.selector, obj.spec.template?.metadata?.labels ?? {})) {
      errors.push(`${where}: spec.selector does not select its own pod template's labels`);
    }
    if (obj.kind === "Service" && obj.spec?.selector) {
      const selected = podsIn(ns, obj.spec.selector);
      if (selected.length === 0) {
        errors.push(`${where}: selector ${JSON.stringify(obj.spec.selector)} selects no pod`);
      }
      for (const port of obj.spec.ports ?? []) {
        const target = port.targetPort ?? port.port;
        for (const pod of selected) {
          const n = containerPortNumber(pod, null, target);
          const declared = containersOf(pod.spec).some((c) => (c.ports ?? []).some((p) => p.containerPort === n));
          if (n === null || !declared) {
            errors.push(`${where}: port ${port.name ?? port.port}: targetPort ${target} is no container port of ${describe(pod.obj)}`);
          }
        }
      }
    }
    if (obj.kind === "PodDisruptionBudget" && podsIn(ns, obj.spec?.selector).length === 0) {
      errors.push(`${where}: selector selects no pod`);
    }
    if (obj.kind === "NetworkPolicy") {
      const selected = isEmptySelector(obj.spec?.podSelector) ? pods.filter((p) => p.ns === ns)
                                                              : podsIn(ns, obj.spec?.podSelector);
      if (selected.length === 0) errors.push(`${where}: podSelector selects no pod`);
      for (const rule of obj.spec?.ingress ?? []) {
        for (const peer of rule.from ?? []) {
          if (peer.podSelector && !peer.namespaceSelector && !isEmptySelector(peer.podSelector) &&
              podsIn(ns, peer.podSelector).length === 0) {
            errors.push(`${where}: ingress from podSelector ${JSON.stringify(peer.podSelector)} selects no pod`);
          }
        }
        for (const p of rule.ports ?? []) {
          if (typeof p.port === "string" && !/^\d+$/.test(p.port)) {
            for (const pod of selected) {
              if (containerPortNumber(pod, null, p.port) === null) {
                errors.push(`${where}: port ${p.port} is no named container port of ${describe(pod.obj)}`);
              }
            }
          }
        }
      }
    }
    if (obj.kind === "PodMonitor") {
      const selected = podsIn(ns, obj.spec?.selector);
      if (selected.length === 0) errors.push(`${where}: selector selects no pod`);
      for (const ep of obj.spec?.podMetricsEndpoints ?? []) {
        for (const pod of selected) {
          if (containerPortNumber(pod, null, ep.port) === null) {
            errors.push(`${where}: PodMonitor port ${ep.port} is no container port of ${describe(pod.obj)}`);
          }
        }
      }
    }
    if (obj.kind === "ServiceMonitor") {
      const services = objects.map((o) => o.obj).filter((o) => o.kind === "Service" &&
          namespaceOf(o) === ns && selects(obj.spec?.selector, o.metadata?.labels ?? {}));
      if (services.length === 0) errors.push(`${where}: selector selects no Service`);
      for (const ep of obj.spec?.endpoints ?? []) {
        for (const svc of services) {
          if (!(svc.spec?.ports ?? []).some((p) => p.name === ep.port)) {
            errors.push(`${where}: ServiceMonitor port ${ep.port} is no port of ${describe(svc)}`);
          }
        }
      }
    }
  }
  return errors;
}

// Secrets a render makes: Secret objects, and cert-manager Certificates'
// spec.secretName (with the keys cert-manager writes).
const CERT_MANAGER_KEYS = ["tls.crt", "tls.key", "ca.crt"];

function secretKeys(objects, ns, name) {
  const secret = find(objects, "Secret", ns, name);
  if (secret) return [...Object.keys(secret.data ?? {}), ...Object.keys(secret.stringData ?? {})];
  const cert = objects.find(({ obj }) => obj.kind === "Certificate" && namespaceOf(obj) === ns &&
                                          obj.spec?.secretName === name);
  return cert ? CERT_MANAGER_KEYS : null;
}

function configMapKeys(objects, ns, name) {
  const cm = find(objects, "ConfigMap", ns, name);
  return cm ? [...Object.keys(cm.data ?? {}), ...Object.keys(cm.binaryData ?? {})] : null;
}

// Every ConfigMap, Secret, PersistentVolumeClaim and ServiceAccount a pod
// names exists in the render (unless marked optional), and every mount names
// a volume of the pod.
function referenceErrors(objects) {
  const errors = [];
  for (const pod of podTemplates(objects)) {
    const where = describe(pod.obj);
    const ns = pod.ns;
    const sa = pod.spec.serviceAccountName;
    if (sa && sa !== "default" && !find(objects, "ServiceAccount", ns, sa)) {
      errors.push(`${where}: ServiceAccount ${sa} is not in the render`);
    }
    const volumes = new Map((pod.spec.volumes ?? []).map((v) => [v.name, v]));
    const checkConfigMap = (name, optional, what) => {
      if (!optional && configMapKeys(objects, ns, name) === null) {
        errors.push(`${where}: ${what} names ConfigMap ${name}, which is not in the render`);
      }
    };
    const checkSecret = (name, optional, what) => {
      if (!optional && secretKeys(objects, ns, name) === null) {
        errors.push(`${where}: ${what} names Secret ${name}, which is not in the render (nor made by a Certificate)`);
      }
    };
    for (const v of volumes.values()) {
      const what = `volume ${v.name}`;
      if (v.configMap) checkConfigMap(v.configMap.name, v.configMap.optional, what);
      if (v.secret) checkSecret(v.secret.secretName, v.secret.optional, what);
      if (v.persistentVolumeClaim && !find(objects, "PersistentVolumeClaim", ns, v.persistentVolumeClaim.claimName)) {
        errors.push(`${where}: ${what} names PersistentVolumeClaim ${v.persistentVolumeClaim.claimName}, which is not in the render`);
      }
      for (const s of v.projected?.sources ?? []) {
        if (s.configMap) checkConfigMap(s.configMap.name, s.configMap.optional, what);
        if (s.secret) checkSecret(s.secret.name, s.secret.optional, what);
      }
    }
    for (const c of containersOf(pod.spec)) {
      for (const m of c.volumeMounts ?? []) {
        if (!volumes.has(m.name)) errors.push(`${where}: container ${c.name} mounts ${m.name}, which is no volume of the pod`);
      }
      for (const e of c.env ?? []) {
        const cm = e.valueFrom?.configMapKeyRef;
        const sec = e.valueFrom?.secretKeyRef;
        if (cm) checkConfigMap(cm.name, cm.optional, `env ${e.name}`);
        if (sec) checkSecret(sec.name, sec.optional, `env ${e.name}`);
      }
      for (const e of c.envFrom ?? []) {
        if (e.configMapRef) checkConfigMap(e.configMapRef.name, e.configMapRef.optional, "envFrom");
        if (e.secretRef) checkSecret(e.secretRef.name, e.secretRef.optional, "envFrom");
      }
    }
  }
  return errors;
}

// Path flags of tern's binaries: `write` ones must lie on a writable volume
// (the root file system is read-only), `read` ones on a mounted volume, and
// a file from a ConfigMap or Secret must be one of its keys.
const PATH_FLAGS = {
  ternd: {
    write: ["--db", "--artifact-root", "--checkpoint-root", "--rendezvous-key-file"],
    read: ["--quota-file", "--tls-cert", "--tls-key", "--tls-client-ca", "--token-file",
           "--metrics-token-file", "--metrics-tls-cert", "--metrics-tls-key"],
  },
  "tern-agent": {
    write: ["--workdir", "--trainer-writable"],
    read: ["--tls-ca", "--tls-cert", "--tls-key", "--token-file", "--metrics-token-file",
           "--metrics-tls-cert", "--metrics-tls-key"],
  },
};

function mountFor(container, file) {
  let best = null;
  for (const m of container.volumeMounts ?? []) {
    const root = m.mountPath.replace(/\/+$/, "");
    if ((file === root || file.startsWith(root + "/")) && (!best || root.length > best.mountPath.length)) {
      best = { ...m, mountPath: root };
    }
  }
  return best;
}

function pathErrors(objects, pod, container, flags, help, binary) {
  const errors = [];
  const where = `${describe(pod.obj)}: container ${container.name}`;
  const volumes = new Map((pod.spec.volumes ?? []).map((v) => [v.name, v]));
  const check = (flag, file, write) => {
    if (!file || file.startsWith("<")) return;
    if (!file.startsWith("/")) {
      errors.push(`${where}: ${flag} ${file} is relative to the working directory, on the read-only root file system`);
      return;
    }
    const mount = mountFor(container, file);
    if (!mount) {
      errors.push(`${where}: ${flag} ${file} is on no volume (the root file system is read-only)`);
      return;
    }
    const volume = volumes.get(mount.name) ?? {};
    const readOnlyVolume = volume.configMap || volume.secret || volume.projected || volume.downwardAPI ||
                           (volume.csi && volume.csi.readOnly);
    if (write && (mount.readOnly || readOnlyVolume)) {
      errors.push(`${where}: ${flag} ${file} must be writable but is not on a writable volume (${mount.name})`);
    }
    const rel = file.slice(mount.mountPath.length + 1);
    let keys = null;
    if (volume.configMap) keys = configMapKeys(objects, pod.ns, volume.configMap.name);
    if (volume.secret) keys = secretKeys(objects, pod.ns, volume.secret.secretName);
    if (volume.csi?.driver === "csi.cert-manager.io") keys = CERT_MANAGER_KEYS;
    if (keys !== null && !keys.includes(rel)) {
      errors.push(`${where}: ${flag} ${file}: ${rel} is no key of volume ${mount.name} (keys: ${keys.join(", ")})`);
    }
  };
  const table = PATH_FLAGS[binary] ?? { write: [], read: [] };
  for (const [list, write] of [[table.write, true], [table.read, false]]) {
    for (const flag of list) {
      const value = flagValue(flags, help, flag);
      if (value === null || value === "") continue;
      for (const file of value.split(",")) check(flag, file, write);
    }
  }
  const tmp = container.env?.find((e) => e.name === "TMPDIR")?.value;
  if (tmp) check("TMPDIR", tmp, true);
  return errors;
}

// Flags exist in the binary's --help; listening addresses, container ports,
// probes and scrape annotations agree; paths are on the right volumes;
// agents' grace, slots and devices fit the pod.
function containerErrors(objects, binaries) {
  const errors = [];
  for (const pod of podTemplates(objects)) {
    for (const c of containersOf(pod.spec)) {
      const where = `${describe(pod.obj)}: container ${c.name}`;
      const binary = binaryOf(c);
      const help = binaries.help.get(binary);
      // An init container may run a plain tool of the image to prepare a
      // file (overlays/postgres copies a Secret's key to a 0600 file).
      if (!help && (pod.spec.initContainers ?? []).includes(c) && INIT_TOOLS.includes(binary)) {
        continue;
      }
      if (!help) {
        errors.push(`${where}: runs ${binary ?? "nothing"}, not a tern binary whose --help this check read (${[...binaries.help.keys()].join(", ")})`);
        continue;
      }
      const { flags, all, env, errors: argErrors } = containerFlags(c);
      errors.push(...argErrors.map((e) => `${where}: ${e}`));
      for (const [flag] of all) {
        if (!help.has(flag)) errors.push(`${where}: unknown flag ${flag} (not in ${binary} --help)`);
      }
      // Listening addresses, container ports, probes, annotations.
      const grpc = binary === "ternd" ? flagValue(flags, help, "--listen") : null;
      const metrics = flagValue(flags, help, "--metrics-listen");
      const listening = new Map();
      for (const [flag, address] of [["--listen", grpc], ["--metrics-listen", metrics]]) {
        if (!address) continue;
        const host = address.slice(0, address.lastIndexOf(":"));
        if (/^(127\.|localhost$|\[?::1\]?$)/.test(host)) {
          errors.push(`${where}: ${flag} ${address} listens on loopback only: nothing outside the pod reaches it`);
        }
        listening.set(portOf(address), flag);
      }
      for (const p of c.ports ?? []) {
        if (!listening.has(p.containerPort)) {
          errors.push(`${where}: containerPort ${p.containerPort} (${p.name ?? "unnamed"}) is no port ${binary} listens on (${[...listening.keys()].join(", ") || "none"})`);
        }
      }
      for (const [port, flag] of listening) {
        if (!(c.ports ?? []).some((p) => p.containerPort === port)) {
          errors.push(`${where}: ${flag} port ${port} has no containerPort`);
        }
      }
      for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const probe = c[kind];
        if (!probe) continue;
        if (probe.grpc && probe.grpc.port !== portOf(grpc)) {
          errors.push(`${where}: ${kind} speaks gRPC to port ${probe.grpc.port}, but ${binary} serves gRPC on ${grpc ?? "none"}`);
        }
        if (probe.httpGet) {
          const n = containerPortNumber(null, c, probe.httpGet.port);
          if (n !== portOf(metrics)) {
            errors.push(`${where}: ${kind} GETs port ${probe.httpGet.port}, but ${binary} serves HTTP (/healthz, /metrics) on ${metrics ?? "none"}`);
          }
          const paths = binary === "ternd" ? ["/healthz", "/readyz", "/metrics"] : ["/healthz", "/metrics"];
          if (!paths.includes(probe.httpGet.path)) {
            errors.push(`${where}: ${kind} GETs ${probe.httpGet.path}; the metrics server serves ${paths.join(", ")}`);
          }
        }
        if (probe.tcpSocket && !listening.has(containerPortNumber(null, c, probe.tcpSocket.port))) {
          errors.push(`${where}: ${kind} connects to port ${probe.tcpSocket.port}, where ${binary} does not listen`);
        }
      }
      if (pod.annotations["prometheus.io/scrape"] === "true" && pod.spec.containers.length === 1) {
        if (!metrics) errors.push(`${where}: prometheus.io/scrape is "true" but ${binary} serves no metrics`);
        else if (Number(pod.annotations["prometheus.io/port"]) !== portOf(metrics)) {
          errors.push(`${where}: prometheus.io/port ${pod.annotations["prometheus.io/port"]} is not --metrics-listen's port ${portOf(metrics)}`);
        }
      }
      errors.push(...pathErrors(objects, pod, c, flags, help, binary));
      if (binary === "tern-agent") {
        // The drain must finish before the kubelet's SIGKILL.
        const grace = Number(flagValue(flags, help, "--shutdown-grace"));
        const tgps = pod.spec.terminationGracePeriodSeconds ?? 30;
        if (!(tgps >= grace + 10)) {
          errors.push(`${where}: terminationGracePeriodSeconds ${tgps} leaves less than 10 s above --shutdown-grace ${grace} for the drain's last reports`);
        }
        // Slots the pod can hold.
        const cuda = Number(flagValue(flags, help, "--cuda-slots") ?? 0);
        const cpu = Number(flagValue(flags, help, "--cpu-slots") ?? 0);
        if (!Number.isInteger(cuda) || !Number.isInteger(cpu)) {
          errors.push(`${where}: --cpu-slots ${cpu} / --cuda-slots ${cuda} are not numbers`);
        }
        if (cuda + cpu <= 0) errors.push(`${where}: the agent offers no slot`);
        const gpus = Number(c.resources?.limits?.["nvidia.com/gpu"] ?? 0);
        if (cuda !== gpus) {
          errors.push(`${where}: --cuda-slots ${cuda} but the container's nvidia.com/gpu limit is ${gpus}`);
        }
        const threads = Number(env.get("OMP_NUM_THREADS") ?? 1);
        const cpuLimit = cpuQuantity(c.resources?.limits?.cpu);
        if (cpu > 0 && cpuLimit !== null && cpu * threads > Math.ceil(cpuLimit)) {
          errors.push(`${where}: ${cpu} CPU slots × OMP_NUM_THREADS ${threads} exceed the CPU limit ${c.resources.limits.cpu}`);
        }
      }
    }
  }
  return errors;
}

// Agent pods admit from each other exactly ternd's rendezvous port range (the
// binary's default or ternd's flags) and the kernel's port range the pods
// set (Gloo/NCCL), and nothing else.
function rendezvousErrors(objects, binaries) {
  const errors = [];
  const pods = podTemplates(objects);
  const ternd = pods.flatMap((p) => containersOf(p.spec).filter((c) => binaryOf(c) === "ternd"));
  const agents = pods.filter((p) => containersOf(p.spec).some((c) => binaryOf(c) === "tern-agent"));
  if (ternd.length === 0 || agents.length === 0) return errors;
  const help = binaries.help.get("ternd");
  const { flags } = containerFlags(ternd[0]);
  const min = Number(flagValue(flags, help, "--rendezvous-port-min"));
  const max = Number(flagValue(flags, help, "--rendezvous-port-max"));
  for (const agent of agents) {
    const where = describe(agent.obj);
    const sysctl = (agent.spec.securityContext?.sysctls ?? []).find((s) => s.name === "net.ipv4.ip_local_port_range");
    const kernel = sysctl ? String(sysctl.value).trim().split(/\s+/).map(Number) : null;
    if (!kernel) {
      errors.push(`${where}: sets no net.ipv4.ip_local_port_range, so no NetworkPolicy can admit exactly Gloo/NCCL's ports`);
    } else if (kernel[0] <= max && min <= kernel[1]) {
      errors.push(`${where}: net.ipv4.ip_local_port_range ${kernel.join("-")} overlaps ternd's rendezvous range ${min}-${max}`);
    }
    const wanted = [[min, max, `ternd's rendezvous ports ${min}-${max} (--rendezvous-port-min/max)`]];
    if (kernel) wanted.push([kernel[0], kernel[1], `the pods' ip_local_port_range ${kernel.join("-")}`]);
    const admitted = [];
    for (const { obj } of objects) {
      if (obj.kind !== "NetworkPolicy" || namespaceOf(obj) !== agent.ns) continue;
      if (!isEmptySelector(obj.spec?.podSelector) && !selects(obj.spec.podSelector, agent.labels)) continue;
      for (const rule of obj.spec?.ingress ?? []) {
        const fromAgents = (rule.from ?? []).some((peer) => peer.podSelector && !peer.namespaceSelector &&
                                                             selects(peer.podSelector, agent.labels));
        if (!fromAgents) continue;
        if (!rule.ports || rule.ports.length === 0) {
          errors.push(`${describe(obj)}: admits all ports from agent pods; only the rendezvous and collective ranges are needed`);
        }
        for (const p of rule.ports ?? []) {
          const lo = containerPortNumber(agent, null, p.port);
          admitted.push([lo, p.endPort ?? lo, describe(obj)]);
        }
      }
    }
    for (const [lo, hi, what] of wanted) {
      if (!admitted.some(([a, b]) => a === lo && b === hi)) {
        errors.push(`${where}: no NetworkPolicy admits ${what} from the other agent pods (admitted: ${admitted.map(([a, b]) => a === b ? a : `${a}-${b}`).join(", ") || "none"})`);
      }
    }
    for (const [lo, hi, policy] of admitted) {
      if (!wanted.some(([a, b]) => a === lo && b === hi)) {
        errors.push(`${policy}: admits ports ${lo === hi ? lo : `${lo}-${hi}`} from agent pods, which are neither the rendezvous nor the collective range`);
      }
    }
  }
  return errors;
}

// The `restricted` Pod Security Standard, and requests and limits.
function securityErrors(objects) {
  const errors = [];
  for (const pod of podTemplates(objects)) {
    const ps = pod.spec.securityContext ?? {};
    for (const c of containersOf(pod.spec)) {
      const where = `${describe(pod.obj)}: container ${c.name}`;
      const cs = c.securityContext ?? {};
      if ((cs.runAsNonRoot ?? ps.runAsNonRoot) !== true) errors.push(`${where}: runAsNonRoot is not true`);
      if ((cs.runAsUser ?? ps.runAsUser) === 0) errors.push(`${where}: runs as uid 0`);
      if ((cs.seccompProfile ?? ps.seccompProfile)?.type !== "RuntimeDefault") {
        errors.push(`${where}: seccompProfile is not RuntimeDefault`);
      }
      if (cs.allowPrivilegeEscalation !== false) errors.push(`${where}: allowPrivilegeEscalation is not false`);
      if (cs.readOnlyRootFilesystem !== true) errors.push(`${where}: readOnlyRootFilesystem is not true`);
      if (!(cs.capabilities?.drop ?? []).includes("ALL")) errors.push(`${where}: capabilities do not drop ALL`);
      if ((cs.capabilities?.add ?? []).length > 0) errors.push(`${where}: adds capabilities`);
      if (cs.privileged) errors.push(`${where}: is privileged`);
      for (const kind of ["requests", "limits"]) {
        for (const res of ["cpu", "memory"]) {
          if (c.resources?.[kind]?.[res] === undefined) errors.push(`${where}: no ${res} in resources.${kind}`);
        }
      }
    }
    if (pod.spec.hostNetwork || pod.spec.hostPID || pod.spec.hostIPC) {
      errors.push(`${describe(pod.obj)}: shares a host namespace`);
    }
  }
  for (const { obj } of objects) {
    if (obj.kind === "Namespace" &&
        obj.metadata?.labels?.["pod-security.kubernetes.io/enforce"] !== "restricted") {
      errors.push(`${describe(obj)}: does not enforce the restricted Pod Security Standard`);
    }
  }
  return errors;
}

// Every container runs an image that docker/ builds: `images.names` are the
// repositories' last path components (tern, tern-cuda: the images' OCI title
// labels); `images.exact`, when given, the full references a render must use
// (what scripts/image.sh tags); `images.entrypoint`, when the images have one
// (tini), must not be replaced by a container's command.
function imageErrors(objects, images) {
  const errors = [];
  if (!images) return errors;
  for (const pod of podTemplates(objects)) {
    for (const c of containersOf(pod.spec)) {
      const where = `${describe(pod.obj)}: container ${c.name}`;
      const m = /^(?:(.*)\/)?([^/:@]+)(?::([^/@]+))?(?:@(.+))?$/.exec(c.image ?? "");
      if (!m) {
        errors.push(`${where}: image ${c.image} cannot be parsed`);
        continue;
      }
      if (!images.names.includes(m[2])) {
        errors.push(`${where}: image ${c.image} is none of the images docker/ builds (${images.names.join(", ")})`);
      }
      if (!m[3] && !m[4]) errors.push(`${where}: image ${c.image} has no tag (set one with kustomize images:)`);
      if (images.exact && !images.exact.includes(c.image)) {
        errors.push(`${where}: image ${c.image} is not what scripts/image.sh tags (${images.exact.join(", ")})`);
      }
      if (images.entrypoint && c.command) {
        errors.push(`${where}: sets command, which replaces the image's entrypoint ${images.entrypoint} (put the program in args)`);
      }
    }
  }
  return errors;
}

// All consistency checks. `binaries.help`: Map binary -> parseHelp() result;
// `images`: see imageErrors (null: not checked).
export function consistencyErrors(objects, binaries, images) {
  return [
    ...selectionErrors(objects),
    ...referenceErrors(objects),
    ...containerErrors(objects, binaries),
    ...rendezvousErrors(objects, binaries),
    ...securityErrors(objects),
    ...imageErrors(objects, images),
  ];
}
