#!/usr/bin/env python3
"""Adapts a rendered kustomize overlay to what `podman kube play` 4.3 runs.

Used by tests/e2e/kube_play_e2e.sh. Podman plays Pods, Deployments (one pod
per replica, named <deployment>-pod-<i>), PersistentVolumeClaims (named
volumes) and ConfigMaps (as volume and env sources); it is not a cluster.
What this changes, each for a podman limitation, and nothing else:
  - kinds podman does not play (Namespace, Service, NetworkPolicy,
    PodDisruptionBudget, ServiceAccount, ...) are left out and listed;
  - names get a prefix (Deployments, claims, ConfigMaps and the references to
    them), so that runs do not collide;
  - a Service name in a container's arguments (`--server=ternd:7070`) becomes
    the DNS name of the pod it selects (`<prefix>ternd-pod-0`): there are no
    Services, but pods resolve each other by name on a podman network;
  - `fieldPath: status.podIP` (unsupported) becomes `metadata.name`, the
    pod's name, which resolves to its address the same way;
  - `$(VAR)` in arguments (Kubernetes expands it, podman does not): a
    container whose arguments use one runs them through `/bin/sh -c exec ...`
    behind the image's entrypoint (tini stays PID 1), with ${VAR} expanded
    from the same environment;
  - podman 4.3 plays an emptyDir as a named volume of the volume's name,
    which every pod using that name shares: a Deployment of N replicas is
    played as N Deployments of one replica (<name>-<i>), and each emptyDir is
    named after its pod's Deployment;
  - container ports are dropped (podman 4.3 publishes every containerPort on
    the host, which collides between replicas) and so are probes (podman runs
    them only through systemd timers, and has no gRPC probes).
usage: kube_play_podman.py PREFIX IN.yaml OUT.yaml   (prints what it changed)
"""
import copy
import re
import shlex
import sys

import yaml

PLAYED = {"Deployment", "Pod", "PersistentVolumeClaim", "ConfigMap"}
ENTRYPOINT = ["/usr/bin/tini", "--"]


def copy_of(obj):
    return copy.deepcopy(obj)


def main(prefix, source, target):
    docs = [d for d in yaml.safe_load_all(open(source)) if d]
    notes = []
    services = {}  # service name -> pod DNS name
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for d in docs:
        if d["kind"] != "Service":
            continue
        selector = d["spec"].get("selector", {})
        for name, dep in deployments.items():
            labels = dep["spec"]["template"]["metadata"].get("labels", {})
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                suffix = "-0" if dep["spec"].get("replicas", 1) > 1 else ""
                services[d["metadata"]["name"]] = "%s%s%s-pod-0" % (prefix, name, suffix)
    dropped = sorted({d["kind"] for d in docs if d["kind"] not in PLAYED})
    notes.append("left out (not played by podman): " + ", ".join(dropped))
    kept = []
    for d in docs:
        if d["kind"] not in PLAYED:
            continue
        replicas = d["spec"].get("replicas", 1) if d["kind"] == "Deployment" else 1
        if replicas <= 1:
            kept.append(d)
            continue
        # One Deployment per replica: podman 4.3 gives every replica the same
        # named volume for an emptyDir, so each replica needs its own names.
        for i in range(replicas):
            copy = copy_of(d)
            copy["metadata"]["name"] = "%s-%d" % (d["metadata"]["name"], i)
            copy["spec"]["replicas"] = 1
            kept.append(copy)
        notes.append("%s: its %d replicas as %d Deployments of one replica" % (d["metadata"]["name"], replicas, replicas))
    for d in kept:
        d["metadata"]["name"] = prefix + d["metadata"]["name"]
        d["metadata"].pop("namespace", None)
        if d["kind"] != "Deployment":
            continue
        spec = d["spec"]["template"]["spec"]
        renamed = {}
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                # podman 4.3 plays an emptyDir as a named volume of that name,
                # which every pod with the same name would share.
                renamed[volume["name"]] = "%s-%s" % (d["metadata"]["name"], volume["name"])
                volume["name"] = renamed[volume["name"]]
            if "persistentVolumeClaim" in volume:
                volume["persistentVolumeClaim"]["claimName"] = prefix + volume["persistentVolumeClaim"]["claimName"]
            if "configMap" in volume:
                volume["configMap"]["name"] = prefix + volume["configMap"]["name"]
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for mount in c.get("volumeMounts", []):
                mount["name"] = renamed.get(mount["name"], mount["name"])
        if renamed:
            notes.append("%s: emptyDir volumes %s named per pod (podman 4.3 plays an emptyDir as a named "
                         "volume of its name, shared by every pod)" % (d["metadata"]["name"], ", ".join(sorted(renamed))))
        for c in spec.get("containers", []):
            where = "%s/%s" % (d["metadata"]["name"], c["name"])
            env = {}
            for e in c.get("env", []):
                field = e.get("valueFrom", {}).get("fieldRef", {})
                if field.get("fieldPath") == "status.podIP":
                    field["fieldPath"] = "metadata.name"
                    notes.append("%s: %s from metadata.name (the pod's DNS name) instead of status.podIP" % (where, e["name"]))
                env[e["name"]] = e.get("value")
            for e in c.get("envFrom", []):
                if "configMapRef" in e:
                    e["configMapRef"]["name"] = prefix + e["configMapRef"]["name"]
            args = []
            for a in c.get("args", []):
                for service, pod in services.items():
                    a2 = re.sub(r"(=|^)%s:" % re.escape(service), r"\g<1>%s:" % pod, a)
                    if a2 != a:
                        notes.append("%s: %s -> %s (no Services)" % (where, a, a2))
                        a = a2
                # $(VAR) of literal values: substituted here.
                a = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                           lambda m: env[m.group(1)] if env.get(m.group(1)) is not None else m.group(0), a)
                args.append(a)
            if any(re.search(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", a) for a in args):
                words = []
                for a in args:
                    parts = re.split(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a)
                    word = ""
                    for i, part in enumerate(parts):
                        word += ('"${%s}"' % part) if i % 2 else (shlex.quote(part) if part else "")
                    words.append(word)
                c["command"] = ENTRYPOINT + ["/bin/sh", "-c", "exec " + " ".join(words)]
                c.pop("args")
                notes.append("%s: arguments through /bin/sh -c (podman does not expand $(VAR))" % where)
            else:
                c["args"] = args
            if c.pop("ports", None):
                notes.append("%s: container ports dropped" % where)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if c.pop(probe, None):
                    notes.append("%s: %s dropped" % (where, probe))
    with open(target, "w") as f:
        yaml.safe_dump_all(kept, f, sort_keys=False)
    print("\n".join(notes))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
