#!/usr/bin/env python3
"""Offline validation of the manifests in deploy/ (no cluster, no network).

Usage: /opt/interceptor-venv/bin/python tests/manifests/validate.py FILE...
Exit status 0 when every file passes, 1 when one fails, 2 on bad usage. One line per
document: `ok   FILE: Kind/name ...` or `FAIL FILE: ...`.

What is checked, by kind of file:

* Kubernetes API objects (Pod, DaemonSet, Namespace, RBAC, ...): the JSON schemas that
  kubernetes-validate bundles, in strict mode (an unknown field anywhere is an error),
  against every version in K8S_VERSIONS. A document whose apiVersion/kind has no schema
  is an error here (the kubernetes-validate CLI only warns and exits 0, which would let a
  typo such as `apps/v2` pass). On top of the schemas, rules the API server or the kubelet
  enforce that a schema cannot express: unique container and volume names, every
  volumeMount naming a volume, `mountPropagation: Bidirectional` only in a privileged
  container, capability names that exist, named probe ports that exist, hostPort equal
  to containerPort under hostNetwork; and every interceptor image is IMAGE.
* IstioOperator (install.istio.io, a CRD with no Kubernetes schema): the hand-written JSON
  schema istiooperator.schema.json beside this file (apiVersion, kind, metadata.name, the
  IstioOperatorSpec field names, spec.values.global.proxy_init.{image,...}), and the image
  is IMAGE.
* Helm values files (values*.yaml, no apiVersion/kind): a YAML mapping with the key path
  global.proxy_init.image, a string that is IMAGE; no unknown key under proxy_init.
* kustomization.yaml (a kustomize file, not an API object): apiVersion/kind, known keys
  only, `resources` naming files that exist beside it, and every other manifest in its
  folder listed.

Every file is parsed as YAML with duplicate mapping keys rejected (PyYAML would silently
keep the last one; kubectl refuses them).
"""

import json
import os
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

# The oldest and the newest Kubernetes minor of the upstream support window when this was
# written (kubernetes-validate 1.37.0 bundles schemas for 1.25 to 1.37).
K8S_VERSIONS = ("1.35.0", "1.37.0")

# The image `cargo xtask image` builds. Operators retag it for their registry; to validate
# an edited copy, set INTERCEPTOR_IMAGE to the new reference.
IMAGE = os.environ.get("INTERCEPTOR_IMAGE", "localhost/interceptor:0.1.0")

HERE = os.path.dirname(os.path.abspath(__file__))

# Linux capabilities (include/uapi/linux/capability.h), as Kubernetes spells them.
CAPABILITIES = {
    "ALL", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

POD_TEMPLATE_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"}

KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "namespace", "resources", "labels", "commonLabels",
    "commonAnnotations", "images", "namePrefix", "nameSuffix",
}


class Invalid(Exception):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    pass


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, "duplicate key %r" % (key,), key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_documents(path):
    with open(path) as f:
        text = f.read()
    try:
        docs = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as e:
        raise Invalid("not valid YAML: %s" % e)
    if not docs:
        raise Invalid("no YAML document in the file")
    return docs


def name_of(doc):
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return "%s/%s" % (doc.get("kind"), meta.get("name", "?"))


# --- Kubernetes objects -------------------------------------------------------------------

def check_kubernetes(doc):
    if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
        raise Invalid("a Kubernetes object needs string apiVersion and kind")
    for version in K8S_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            raise Invalid("%s: schema of Kubernetes %s (strict): %s: %s"
                          % (name_of(doc), kv.major_minor(version), path, e.message))
        except kv.SchemaNotFoundError as e:
            raise Invalid("%s: %s (wrong apiVersion or kind?)" % (name_of(doc), e.message))
    spec = pod_spec(doc)
    if spec is not None:
        check_pod_spec(spec)


def pod_spec(doc):
    kind = doc["kind"]
    if kind == "Pod":
        return doc.get("spec", {})
    if kind in POD_TEMPLATE_KINDS:
        return doc.get("spec", {}).get("template", {}).get("spec", {})
    if kind == "CronJob":
        return (doc.get("spec", {}).get("jobTemplate", {}).get("spec", {})
                .get("template", {}).get("spec", {}))
    return None


def check_pod_spec(spec):
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    names = [c["name"] for c in containers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise Invalid("container names repeated: %s" % ", ".join(dup))
    volumes = [v["name"] for v in spec.get("volumes", [])]
    dup = sorted({n for n in volumes if volumes.count(n) > 1})
    if dup:
        raise Invalid("volume names repeated: %s" % ", ".join(dup))
    host_network = spec.get("hostNetwork", False)
    for c in containers:
        where = "container %s" % c["name"]
        sc = c.get("securityContext", {})
        mount_paths = []
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                raise Invalid("%s: volumeMount %s names no volume" % (where, m["name"]))
            if m.get("mountPropagation") == "Bidirectional" and not sc.get("privileged"):
                raise Invalid("%s: mountPropagation Bidirectional on %s needs privileged: true"
                              % (where, m["name"]))
            mount_paths.append(m["mountPath"])
        dup = sorted({p for p in mount_paths if mount_paths.count(p) > 1})
        if dup:
            raise Invalid("%s: mountPath repeated: %s" % (where, ", ".join(dup)))
        caps = sc.get("capabilities", {})
        for cap in caps.get("add", []) + caps.get("drop", []):
            if cap not in CAPABILITIES:
                raise Invalid("%s: unknown capability %r" % (where, cap))
        ports = c.get("ports", [])
        port_names = {p["name"] for p in ports if "name" in p}
        for p in ports:
            if host_network and "hostPort" in p and p["hostPort"] != p["containerPort"]:
                raise Invalid("%s: with hostNetwork, hostPort must equal containerPort" % where)
        for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(probe_kind, {})
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = probe.get(handler, {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    raise Invalid("%s: %s names port %r, which the container does not declare"
                                  % (where, probe_kind, port))
        check_image(c.get("image", ""), where)


def check_image(image, where):
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    if last.split(":", 1)[0] == "interceptor" and image != IMAGE:
        raise Invalid("%s: image %s, expected %s (set INTERCEPTOR_IMAGE to validate a "
                      "retagged copy)" % (where, image, IMAGE))


# --- the files that are not Kubernetes API objects ----------------------------------------

def check_istio_operator(doc):
    with open(os.path.join(HERE, "istiooperator.schema.json")) as f:
        schema = json.load(f)
    try:
        jsonschema.Draft202012Validator(schema).validate(doc)
    except jsonschema.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(top)"
        raise Invalid("%s: istiooperator.schema.json: %s: %s" % (name_of(doc), path, e.message))
    image = doc["spec"]["values"]["global"]["proxy_init"]["image"]
    if image != IMAGE:
        raise Invalid("spec.values.global.proxy_init.image is %r, expected %r" % (image, IMAGE))


def check_helm_values(doc):
    node = doc
    for key in ("global", "proxy_init", "image"):
        if not isinstance(node, dict) or key not in node:
            raise Invalid("no key path global.proxy_init.image (stopped at %r)" % key)
        node = node[key]
    if node != IMAGE:
        raise Invalid("global.proxy_init.image is %r, expected %r" % (node, IMAGE))
    unknown = set(doc["global"]["proxy_init"]) - {"image", "forceApplyIptables", "resources"}
    if unknown:
        raise Invalid("unknown keys under global.proxy_init: %s" % ", ".join(sorted(unknown)))


def check_kustomization(path, doc):
    if doc.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or doc.get("kind") != "Kustomization":
        raise Invalid("expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization")
    unknown = set(doc) - KUSTOMIZATION_KEYS
    if unknown:
        raise Invalid("unknown keys: %s" % ", ".join(sorted(unknown)))
    resources = doc.get("resources")
    if not isinstance(resources, list) or not resources or not all(isinstance(r, str) for r in resources):
        raise Invalid("resources must be a non-empty list of file names")
    if len(set(resources)) != len(resources):
        raise Invalid("resources lists a file twice")
    folder = os.path.dirname(os.path.abspath(path))
    for r in resources:
        if not os.path.isfile(os.path.join(folder, r)):
            raise Invalid("resources names %s, which is not a file beside it" % r)
    beside = {f for f in os.listdir(folder)
              if f.endswith((".yaml", ".yml")) and f != os.path.basename(path)}
    missing = sorted(beside - set(resources))
    if missing:
        raise Invalid("manifests beside it that resources does not list: %s" % ", ".join(missing))


# --- dispatch -------------------------------------------------------------------------------

def check_file(path):
    """Returns a list of (ok, message) lines for the file."""
    docs = load_documents(path)
    base = os.path.basename(path)
    lines = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise Invalid("a document is not a YAML mapping")
        api = doc.get("apiVersion")
        if base in ("kustomization.yaml", "kustomization.yml"):
            check_kustomization(path, doc)
            lines.append("kustomization (resources listed and present)")
        elif api is None and doc.get("kind") is None and base.startswith("values"):
            check_helm_values(doc)
            lines.append("Helm values (global.proxy_init.image = %s)" % IMAGE)
        elif isinstance(api, str) and api.startswith("install.istio.io/"):
            check_istio_operator(doc)
            lines.append("%s (istiooperator.schema.json)" % name_of(doc))
        else:
            check_kubernetes(doc)
            lines.append("%s (Kubernetes %s, strict)"
                         % (name_of(doc), ", ".join(kv.major_minor(v) for v in K8S_VERSIONS)))
    return lines


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    failed = 0
    for path in argv[1:]:
        try:
            for line in check_file(path):
                print("ok   %s: %s" % (path, line))
        except (Invalid, OSError) as e:
            print("FAIL %s: %s" % (path, e))
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
