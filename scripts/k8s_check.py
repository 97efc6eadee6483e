#!/usr/bin/env python3
"""Checks of fleetsim's Kubernetes deployment (deploy/kubernetes, Dockerfile) without a cluster.
Used by scripts/interop.sh (test K).

Every check prints one line:
  PASS  <test>  <check>: <detail>
  FAIL  <test>  <check>: <detail>
and the exit status is 1 when any check failed, else 0.

What it checks, for the base and every overlay under deploy/kubernetes/overlays/:
  1. `kubectl kustomize DIR` renders it.
  2. Every rendered object is valid against the Kubernetes JSON schemas of the oldest and the
     newest version it targets (kubernetes-validate, strict: unknown fields are errors; offline).
  3. Our rules for the Job: completionMode Indexed; completions == parallelism == the
     `--shards-total` of the container's args; restartPolicy Never; a retry per index and a
     podFailurePolicy that fails the Job on exit 2 (bad files, no retry helps); the command is
     the image's `fleetsim`; the scenario argument lies in a mounted ConfigMap that the render
     holds, with that key; every volume comes from the render (or, for a Secret, is named in the
     kustomization as one the user creates); the Prometheus annotations (scrape, path=/metrics,
     port) agree with the container's metrics port and --api-listen, which off loopback needs
     --api-read-only (or a token); requests and limits for CPU and memory, the memory request
     at least what the pod's sessions need by the measured figures (2 KiB a session, 48 KiB
     more with the embedded broker, 16 KiB more with TLS, plus 50 MiB), open files and source
     ports within what a pod has; non-root, read-only root file system, no privilege
     escalation, the image's uid; a deadline with room for the run and one retry.
  4. A headless Service selects exactly the Job's pods, on the metrics port, and the pods'
     subdomain is its name (per-pod DNS).
  5. The ConfigMap's scenario passes `fleetsim validate` in the image's layout (the ConfigMap's
     files at their mount, the folders the Dockerfile copies to /opt/fleetsim beside them).
  6. Each pod's slice: the container's command and args run here (paths rewritten into a local
     copy of the pod's file system, --api-listen moved to 127.0.0.1:0, --dry-run added) with
     JOB_COMPLETION_INDEX=k print exactly the k-th contiguous slice of every cohort, as computed
     here from the scenario (counts scaled to --devices by largest remainder; slice of a cohort
     of C devices starting at F: F + floor(k*C/N) .. F + floor((k+1)*C/N)), with the rendered
     first and last device ids. Every index when the Job has at most 8, else the first, a middle
     one and the last; with every index, the slices together cover every device id of every
     cohort exactly once.
Once: the Dockerfile's shape (builder with `cargo build --release --locked`, bookworm-slim
runtime with ca-certificates, a numeric non-root USER, the shipped folders under /opt/fleetsim,
ENTRYPOINT fleetsim) and .dockerignore; a pod without (or with a bad) JOB_COMPLETION_INDEX exits
2 naming it; and a self-test: broken copies of a rendered overlay are each caught by the rule
that should catch them.
Last, overlays/smoke's pods for real (--live-seconds, 15 s; 0 skips it), as the Job starts
them, with --api-listen on 127.0.0.1 and their embedded brokers on loopback: the readiness
probe's and the scrape annotations' paths answer, the API refuses a POST (read-only); pod 1 is
killed a third into its run (SIGKILL, as the OOM killer does) and started again on its index,
and a merge meanwhile exits 3 naming its slice; then every pod exits 0 with its results on the
shared volume, and the results reader's `fleetsim report merge /results` is complete, with every
slice's ranges those of the dry run.

Every command has a timeout, every wait a deadline, and every process started is ended on the
way out; no server listens off loopback and nothing leaves the machine.
"""

import argparse
import copy
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

import yaml

from interop_common import Results, Skip, run_check

TEST = "K"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join("deploy", "kubernetes")
# The Kubernetes versions the manifests must be valid for: backoffLimitPerIndex and the
# FailIndex action are on by default from 1.29 (beta; GA in 1.33); the newest schemas
# kubernetes-validate ships.
K8S_VERSIONS = ("1.29", "1.37")
# Measured figures (docs/benchmarks.md, src/preflight.rs) the pods are sized from.
SESSION_BYTES = 2048
EMBEDDED_BROKER_BYTES = 48 * 1024
TLS_BYTES = 16 * 1024
PROCESS_BASE_BYTES = 50 * 1024 * 1024
RESERVED_FDS = 256
# The open-files hard limit assumed for a container: containerd 1.x and Docker give 1,048,576,
# containerd 2.x 524,288; 65,536 is a floor that holds on every runtime we know of.
ASSUMED_NOFILE = 65536
# Linux's default ip_local_port_range, 32768-60999.
DEFAULT_PORTS = (32768, 60999)
# Each pod may be retried once within the Job's deadline: 2 x duration + this.
DEADLINE_SLACK_S = 300
ALL_INDICES_UP_TO = 8
TIMEOUT_S = 60
# Flags of `fleetsim run` that take no value.
BOOL_FLAGS = {"--headless", "--tui", "--api-read-only", "--dry-run", "--insecure-skip-verify"}


# ---------------------------------------------------------------------------------------------
# Small helpers

def run(cmd, timeout=TIMEOUT_S, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def parse_duration(text):
    """Seconds of a fleetsim duration ("15m", "90s", "2h", "1d", "500ms")."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text).strip())
    if not m:
        raise ValueError(f"duration {text!r}: expected a number and ms, s, m, h or d")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_quantity(q):
    """A Kubernetes quantity as a number (bytes for memory, cores for CPU)."""
    s = str(q)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?", s)
    if not m:
        raise ValueError(f"quantity {s!r}")
    mult = {None: 1, "m": 0.001, "k": 1e3, "Ki": 1024, "M": 1e6, "Mi": 1024**2, "G": 1e9,
            "Gi": 1024**3, "T": 1e12, "Ti": 1024**4}[m.group(2)]
    return float(m.group(1)) * mult


def mib(b):
    return f"{b / 1024**2:.0f} MiB"


def parse_args(args):
    """fleetsim's args as (positionals, {flag: [values]}), e.g. --broker may repeat."""
    pos, flags = [], {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
            elif a in BOOL_FLAGS:
                k, v = a, True
            else:
                if i + 1 >= len(args):
                    raise ValueError(f"{a} has no value")
                k, v = a, args[i + 1]
                i += 1
            flags.setdefault(k, []).append(v)
        else:
            pos.append(a)
        i += 1
    return pos, flags


def one(flags, name):
    v = flags.get(name)
    if not v:
        return None
    if len(v) > 1:
        raise ValueError(f"{name} given {len(v)} times")
    return v[0]


def render_template(tpl, id_, index, cohort, profile):
    """A device id template (docs/profiles.md): {id}, {id:0N}, {index}, {index:0N}, {cohort},
    {profile}, {{ and }}."""
    out, i = [], 0
    while i < len(tpl):
        c = tpl[i]
        if tpl.startswith("{{", i) or tpl.startswith("}}", i):
            out.append(c)
            i += 2
            continue
        if c == "{":
            j = tpl.index("}", i)
            name, _, fmt = tpl[i + 1:j].partition(":")
            val = {"id": id_, "index": index, "cohort": cohort, "profile": profile}[name]
            if fmt:
                if not re.fullmatch(r"0\d{1,2}", fmt) or name not in ("id", "index"):
                    raise ValueError(f"template {tpl!r}: format {fmt!r}")
                val = str(val).zfill(int(fmt[1:]))
            out.append(str(val))
            i = j + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# The image, as the Dockerfile builds it

def read_dockerfile(root):
    """The Dockerfile's last stage: USER, WORKDIR, ENTRYPOINT, COPY (src, dest) of repo paths;
    and the builder's RUN text and the FROM lines."""
    with open(os.path.join(root, "Dockerfile")) as f:
        text = f.read()
    # Join continuation lines, drop comments.
    lines, cur = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not cur:
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    stages = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append({"from": rest, "run": [], "copy": [], "user": None, "workdir": None,
                           "entrypoint": None, "cmd": None})
        elif stages:
            st = stages[-1]
            if word == "RUN":
                st["run"].append(rest)
            elif word == "COPY":
                parts = rest.split()
                if not any(p.startswith("--from") for p in parts):
                    parts = [p for p in parts if not p.startswith("--")]
                    for src in parts[:-1]:
                        st["copy"].append((src, parts[-1]))
            elif word == "USER":
                st["user"] = rest.strip()
            elif word == "WORKDIR":
                st["workdir"] = rest.strip()
            elif word in ("ENTRYPOINT", "CMD"):
                st[word.lower()] = json.loads(rest)
    if not stages:
        raise ValueError("Dockerfile: no FROM")
    return stages


def image_dirs(stages):
    """{absolute path in the image: repository folder} for the runtime stage's COPY lines."""
    out = {}
    for src, dest in stages[-1]["copy"]:
        if src in (".", "./"):
            continue
        out[os.path.normpath(dest)] = os.path.normpath(src)
    return out


def check_dockerfile(r, root):
    def dockerfile():
        stages = read_dockerfile(root)
        problems = []
        if len(stages) < 2:
            problems.append("want a builder and a runtime stage")
        builder, rt = stages[0], stages[-1]
        if not re.match(r"rust:\S*bookworm", builder["from"].replace("${RUST_VERSION}", "1")):
            problems.append(f"builder FROM {builder['from']!r}: want rust:...bookworm")
        if not any("cargo build" in x and "--release" in x and "--locked" in x for x in builder["run"]):
            problems.append("builder: no `cargo build --release --locked`")
        if not rt["from"].startswith("debian:bookworm-slim"):
            problems.append(f"runtime FROM {rt['from']!r}: want debian:bookworm-slim")
        if not any("ca-certificates" in x for x in rt["run"]):
            problems.append("runtime: no ca-certificates")
        user = (rt["user"] or "").split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"USER {rt['user']!r}: want a numeric non-root uid (runAsNonRoot can verify it)")
        if (rt["entrypoint"] or [""])[0] != "fleetsim":
            problems.append(f"ENTRYPOINT {rt['entrypoint']!r}: want [\"fleetsim\"]")
        dirs = image_dirs(stages)
        for d in ("scenarios", "device-profiles", "firmware-models"):
            if dirs.get(f"/opt/fleetsim/{d}") != d:
                problems.append(f"{d}/ is not copied to /opt/fleetsim/{d}/")
        if rt["workdir"] != "/opt/fleetsim":
            problems.append(f"WORKDIR {rt['workdir']!r}: want /opt/fleetsim")
        if problems:
            return False, "; ".join(problems)
        return True, (f"builder {builder['from']} (cargo build --release --locked), runtime {rt['from']} with "
                      f"ca-certificates, USER {rt['user']}, {', '.join(sorted(dirs))}, ENTRYPOINT fleetsim "
                      "(read, not built: no Docker engine here)")

    r.check("Dockerfile", *run_check(dockerfile))

    def dockerignore():
        with open(os.path.join(root, ".dockerignore")) as f:
            pats = {ln.strip() for ln in f if ln.strip() and not ln.startswith("#")}
        need = {"target", ".git", "fuzz"}
        missing = sorted(p for p in need if p not in pats and f"/{p}" not in pats)
        kept = sorted(p for p in ("src", "crates", "Cargo.toml", "Cargo.lock", "benches", "scenarios",
                                  "device-profiles", "firmware-models") if p in pats)
        if missing or kept:
            return False, f"leaves in {missing}, leaves out what the build needs: {kept}"
        return True, f"{len(pats)} patterns: leaves out {', '.join(sorted(need))}; keeps the workspace's sources"

    r.check(".dockerignore", *run_check(dockerignore))


# ---------------------------------------------------------------------------------------------
# One kustomization

class Render:
    """A rendered kustomization and what the checks derive from it."""

    def __init__(self, name, path, objects, kustomization_text):
        self.name = name
        self.path = path
        self.objects = objects
        self.kustomization_text = kustomization_text

    def of_kind(self, kind):
        return [o for o in self.objects if o.get("kind") == kind]

    def job(self):
        jobs = self.of_kind("Job")
        if len(jobs) != 1:
            raise Skip(f"{len(jobs)} Jobs in the render, want 1")
        return jobs[0]

    def container(self):
        cs = self.job()["spec"]["template"]["spec"].get("containers", [])
        named = [c for c in cs if c.get("name") == "fleetsim"]
        if len(named) != 1:
            raise Skip(f"no single container named fleetsim (have {[c.get('name') for c in cs]})")
        return named[0]

    def args(self):
        c = self.container()
        return parse_args([str(a) for a in c.get("args", [])])

    def shards_total(self):
        _, flags = self.args()
        v = one(flags, "--shards-total")
        if v is None:
            raise Skip("the container's args have no --shards-total")
        return int(v)


def render(kubectl, root, rel):
    p = run([kubectl, "kustomize", os.path.join(root, rel)])
    if p.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {rel} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    objects = [o for o in yaml.safe_load_all(p.stdout) if o]
    with open(os.path.join(root, rel, "kustomization.yaml")) as f:
        ktext = f.read()
    return Render(rel, os.path.join(root, rel), objects, ktext)


def schema_check(rd, versions):
    from kubernetes_validate import utils as kv
    errors, kinds = [], []
    for o in rd.objects:
        kinds.append(f"{o.get('kind')}/{o.get('metadata', {}).get('name')}")
        for v in versions:
            try:
                kv.validate(o, v, strict=True)
            except kv.ValidationError as e:
                errors.append(f"{o.get('kind')} {o['metadata'].get('name')} ({v}): "
                              f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message[:160]}")
            except kv.SchemaNotFoundError as e:
                errors.append(f"{o.get('kind')} ({v}): {e.message}")
    if errors:
        return False, "; ".join(errors[:4]) + (f" (+{len(errors) - 4} more)" if len(errors) > 4 else "")
    return True, f"{len(rd.objects)} objects ({', '.join(kinds)}) valid for Kubernetes {' and '.join(versions)} (strict)"


def job_shape(rd):
    job = rd.job()
    spec = job["spec"]
    pod = spec["template"]["spec"]
    c = rd.container()
    n = rd.shards_total()
    problems = []
    if spec.get("completionMode") != "Indexed":
        problems.append(f"completionMode {spec.get('completionMode')!r}, want Indexed")
    if spec.get("completions") != n or spec.get("parallelism") != n:
        problems.append(f"completions {spec.get('completions')} / parallelism {spec.get('parallelism')}: "
                        f"want both = --shards-total {n}")
    if pod.get("restartPolicy") != "Never":
        problems.append(f"restartPolicy {pod.get('restartPolicy')!r}: want Never (podFailurePolicy needs it)")
    if not isinstance(spec.get("backoffLimitPerIndex"), int) or spec["backoffLimitPerIndex"] < 1:
        problems.append("no backoffLimitPerIndex >= 1: a failed pod would not be retried on its own index")
    rules = (spec.get("podFailurePolicy") or {}).get("rules", [])
    exit2 = [x for x in rules if x.get("action") == "FailJob"
             and 2 in (x.get("onExitCodes") or {}).get("values", [])
             and (x.get("onExitCodes") or {}).get("operator") == "In"]
    if not exit2:
        problems.append("podFailurePolicy does not fail the Job on exit 2 (bad usage or files)")
    if (c.get("command") or [""])[0] != "fleetsim":
        problems.append(f"command {c.get('command')!r}: want [\"fleetsim\"] (the image's ENTRYPOINT)")
    pos, _ = rd.args()
    if not pos or pos[0] != "run":
        problems.append(f"args start {pos[:1]}: want `run`")
    if problems:
        return False, "; ".join(problems)
    return True, (f"Indexed, completions = parallelism = --shards-total = {n}, restartPolicy Never, "
                  f"backoffLimitPerIndex {spec['backoffLimitPerIndex']}, podFailurePolicy {len(rules)} rules "
                  "(exit 2 fails the Job), command fleetsim run")


def mounts(rd):
    """[(mountPath, volume)] of the fleetsim container."""
    pod = rd.job()["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    out = []
    for m in rd.container().get("volumeMounts", []):
        if m["name"] not in vols:
            raise Skip(f"volumeMount {m['name']} has no volume")
        out.append((m["mountPath"], vols[m["name"]], m))
    return out


def scenario_source(rd):
    """(ConfigMap object, key, mountPath) holding the scenario argument."""
    pos, _ = rd.args()
    if len(pos) < 2:
        raise Skip("no scenario argument after `run`")
    scen = pos[1]
    for path, vol, m in mounts(rd):
        if "configMap" in vol and scen.startswith(path.rstrip("/") + "/"):
            rel = scen[len(path.rstrip("/")) + 1:]
            cm_name = vol["configMap"]["name"]
            cms = [o for o in rd.of_kind("ConfigMap") if o["metadata"]["name"] == cm_name]
            if not cms:
                raise Skip(f"the scenario's volume names ConfigMap {cm_name}, which the render does not hold")
            items = vol["configMap"].get("items")
            key = rel
            if items:
                by_path = {it["path"]: it["key"] for it in items}
                key = by_path.get(rel)
            if key not in (cms[0].get("data") or {}):
                raise Skip(f"ConfigMap {cm_name} has no key for {rel} (keys {sorted(cms[0].get('data') or {})})")
            return cms[0], key, path
    raise Skip(f"the scenario {scen} is in no mounted ConfigMap")


def volumes_check(rd):
    cm, key, path = scenario_source(rd)
    problems, seen = [], []
    names = {(o["kind"], o["metadata"]["name"]) for o in rd.objects}
    for mpath, vol, m in mounts(rd):
        if "configMap" in vol:
            ok = ("ConfigMap", vol["configMap"]["name"]) in names
            seen.append(f"{mpath} <- ConfigMap {vol['configMap']['name']}")
        elif "secret" in vol:
            s = vol["secret"]["secretName"]
            ok = ("Secret", s) in names or s in rd.kustomization_text
            seen.append(f"{mpath} <- Secret {s}" + ("" if ("Secret", s) in names else " (yours, named in the kustomization)"))
        elif "persistentVolumeClaim" in vol:
            ok = ("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]) in names
            seen.append(f"{mpath} <- PVC {vol['persistentVolumeClaim']['claimName']}")
        elif "emptyDir" in vol:
            ok = True
            seen.append(f"{mpath} <- emptyDir")
        else:
            ok = False
        if not ok:
            problems.append(f"volume {vol['name']} at {mpath} comes from nothing in the render")
    _, flags = rd.args()
    results = one(flags, "--results")
    if results and not any(results == p or results.startswith(p.rstrip("/") + "/")
                           for p, v, _ in mounts(rd) if "persistentVolumeClaim" in v):
        problems.append(f"--results {results} is not on a persistent volume: the shards' results would go with the pods")
    if problems:
        return False, "; ".join(problems)
    return True, f"scenario {key} from ConfigMap {cm['metadata']['name']} at {path}; " + ", ".join(seen)


def metrics_port(rd):
    """(port number, how it was found) of the container's port named metrics."""
    ports = [p for p in rd.container().get("ports", []) if p.get("name") == "metrics"]
    if len(ports) != 1:
        raise Skip("the container has no port named metrics")
    return ports[0]["containerPort"]


def api_listen(rd):
    _, flags = rd.args()
    v = one(flags, "--api-listen")
    if v is None:
        raise Skip("no --api-listen: no /metrics to scrape")
    host, _, port = v.rpartition(":")
    return host.strip("[]"), int(port), flags


def prometheus_check(rd):
    ann = rd.job()["spec"]["template"]["metadata"].get("annotations", {})
    port = metrics_port(rd)
    host, lport, flags = api_listen(rd)
    problems = []
    if ann.get("prometheus.io/scrape") != "true":
        problems.append(f"prometheus.io/scrape {ann.get('prometheus.io/scrape')!r}, want \"true\"")
    if ann.get("prometheus.io/path") != "/metrics":
        problems.append(f"prometheus.io/path {ann.get('prometheus.io/path')!r}, want /metrics")
    if str(ann.get("prometheus.io/port")) != str(port) or lport != port:
        problems.append(f"ports disagree: annotation {ann.get('prometheus.io/port')}, containerPort {port}, --api-listen {lport}")
    loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    env_names = {e["name"] for e in rd.container().get("env", [])}
    if loopback:
        problems.append(f"--api-listen {host}: loopback, Prometheus cannot reach it")
    elif "--api-read-only" not in flags and "--api-token" not in flags and "FLEETSIM_API_TOKEN" not in env_names:
        problems.append("--api-listen off loopback without --api-read-only or a token: fleetsim refuses it")
    if problems:
        return False, "; ".join(problems)
    mode = "read-only" if "--api-read-only" in flags else "with a token"
    return True, f"scrape=true, path=/metrics, port {port} = containerPort = --api-listen {host}:{lport} ({mode})"


def service_check(rd):
    svcs = rd.of_kind("Service")
    pod_tpl = rd.job()["spec"]["template"]
    labels = pod_tpl["metadata"].get("labels", {})
    others = [o for o in rd.objects if o["kind"] == "Pod"]
    port = metrics_port(rd)
    for s in svcs:
        sel = s["spec"].get("selector") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            continue
        problems = []
        if s["spec"].get("clusterIP") != "None":
            problems.append("not headless (clusterIP None)")
        stray = [p["metadata"]["name"] for p in others
                 if all(p["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        if stray:
            problems.append(f"also selects pod(s) {stray}")
        sp = [p for p in s["spec"].get("ports", [])
              if p.get("targetPort") in ("metrics", port) or (p.get("targetPort") is None and p.get("port") == port)]
        if not sp:
            problems.append(f"no port targets the metrics port ({port})")
        sub = pod_tpl["spec"].get("subdomain")
        if sub != s["metadata"]["name"]:
            problems.append(f"pod subdomain {sub!r} != Service name {s['metadata']['name']!r}: no per-pod DNS names")
        if problems:
            return False, f"Service {s['metadata']['name']}: " + "; ".join(problems)
        return True, (f"headless Service {s['metadata']['name']} selects {sel} = the Job's pods only, port "
                      f"{sp[0]['port']} -> metrics ({port}); pods are {rd.job()['metadata']['name']}-K.{sub}")
    return False, f"no Service selects the Job's pods (labels {labels})"


def security_check(rd, uid):
    pod = rd.job()["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    csc = rd.container().get("securityContext", {})
    problems = []
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        problems.append("runAsNonRoot not set")
    run_as = csc.get("runAsUser", psc.get("runAsUser"))
    if uid is not None and run_as not in (None, uid):
        problems.append(f"runAsUser {run_as} != the image's USER {uid} (files and fsGroup)")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation not false")
    if "ALL" not in (csc.get("capabilities") or {}).get("drop", []):
        problems.append("capabilities not dropped (drop: [ALL])")
    if not any(p == "/tmp" for p, v, _ in mounts(rd)):
        problems.append("no writable /tmp under a read-only root")
    if problems:
        return False, "; ".join(problems)
    return True, (f"runAsNonRoot, uid {run_as} (the image's), read-only root fs with /tmp an emptyDir, "
                  "no privilege escalation, capabilities dropped, seccomp "
                  f"{(psc.get('seccompProfile') or {}).get('type', 'unset')}")


def deadline_check(rd, scenario):
    _, flags = rd.args()
    d = one(flags, "--duration") or scenario.get("duration")
    drain = parse_duration(scenario.get("drain", "2s"))
    run_s = parse_duration(d) + drain
    ads = rd.job()["spec"].get("activeDeadlineSeconds")
    need = 2 * run_s + DEADLINE_SLACK_S
    if ads is None:
        return False, "no activeDeadlineSeconds: a stuck pod would hold the Job forever"
    if ads < need:
        return False, f"activeDeadlineSeconds {ads} < {need:.0f} (a run of {run_s:.0f} s and one retry + {DEADLINE_SLACK_S} s)"
    return True, f"activeDeadlineSeconds {ads} >= {need:.0f} (run {d} + drain, and one retry of a pod)"


# ---------------------------------------------------------------------------------------------
# The pod's file system, here

class PodFs:
    """A local copy of what a pod sees: the image's shipped folders (links into the repository,
    as the Dockerfile copies them) and the pod's volumes at their mount paths."""

    def __init__(self, rd, root, tmp, stages, fleetsim):
        self.base = os.path.join(tmp, "fs")
        os.makedirs(self.base, exist_ok=True)
        for dest, src in image_dirs(stages).items():
            link = self.local(dest)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                os.symlink(os.path.join(root, src), link)
        self.prefixes = sorted(image_dirs(stages), key=len, reverse=True)
        cms = {o["metadata"]["name"]: o for o in rd.of_kind("ConfigMap")}
        secrets = {o["metadata"]["name"]: o for o in rd.of_kind("Secret")}
        for mpath, vol, _ in mounts(rd):
            d = self.local(mpath)
            os.makedirs(d, exist_ok=True)
            self.prefixes.append(mpath)
            if "configMap" in vol:
                data = cms[vol["configMap"]["name"]].get("data") or {}
                self._write_items(d, data, vol["configMap"].get("items"))
            elif "secret" in vol:
                name = vol["secret"]["secretName"]
                if name in secrets:
                    import base64
                    data = {k: base64.b64decode(v).decode() for k, v in (secrets[name].get("data") or {}).items()}
                    data.update(secrets[name].get("stringData") or {})
                else:
                    # The user's Secret: a test CA made here stands in for every PEM key.
                    data = {it["key"]: self._test_ca(tmp, fleetsim) for it in vol["secret"].get("items", [])}
                self._write_items(d, data, vol["secret"].get("items"))
        self.prefixes.sort(key=len, reverse=True)
        self.workdir = self.local(rd.container().get("workingDir") or stages[-1]["workdir"] or "/")
        os.makedirs(self.workdir, exist_ok=True)

    def local(self, path):
        return os.path.join(self.base, path.lstrip("/"))

    def _write_items(self, d, data, items):
        pairs = [(it["key"], it["path"]) for it in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            p = os.path.join(d, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(data[key])

    _ca = None

    def _test_ca(self, tmp, fleetsim):
        if PodFs._ca is None:
            out = os.path.join(tmp, "test-ca")
            scen = os.path.join(ROOT, "scenarios", "smoke.toml")
            p = run([fleetsim, "certs", scen, "--cohort", "trackers", "--devices", "1", "--out", out])
            if p.returncode != 0:
                raise RuntimeError(f"fleetsim certs exited {p.returncode}: {p.stderr.strip()[-300:]}")
            with open(os.path.join(out, "ca.pem")) as f:
                PodFs._ca = f.read()
        return PodFs._ca

    def rewrite(self, arg):
        """An argument with a path in the pod rewritten to its local copy."""
        if "=" in arg and arg.startswith("--"):
            k, v = arg.split("=", 1)
            return f"{k}={self.rewrite(v)}"
        for p in self.prefixes:
            if arg == p or arg.startswith(p.rstrip("/") + "/"):
                return self.local(arg)
        return arg


def pod_command(rd, fs, fleetsim):
    """The container's command and args as they run here: fleetsim from this build, paths in
    the pod rewritten, --api-listen on 127.0.0.1:0 (nothing listens in a dry run, but no server
    here ever leaves loopback), --dry-run added."""
    c = rd.container()
    cmd = [fleetsim]
    args = [str(a) for a in c.get("args", [])]
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--api-listen" and i + 1 < len(args):
            out += [a, "127.0.0.1:0"]
            i += 2
            continue
        if a.startswith("--api-listen="):
            out.append("--api-listen=127.0.0.1:0")
        else:
            out.append(fs.rewrite(a))
        i += 1
    return cmd + out + ["--dry-run"]


def pod_env(rd, k):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "NO_COLOR": "1"}
    for e in rd.container().get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
    if k is not None:
        env["JOB_COMPLETION_INDEX"] = str(k)
    return env


# ---------------------------------------------------------------------------------------------
# The slices, computed here

def load_scenario(fs, rd):
    pos, _ = rd.args()
    path = fs.rewrite(pos[1])
    with open(path, "rb") as f:
        return path, tomllib.load(f)


def expected_cohorts(scen_path, scenario, devices):
    """[(name, first id, count, device_id template, profile name)] after --devices scaling
    (largest remainder: each cohort its share rounded down, the rest to the largest
    remainders, earlier cohorts first on ties)."""
    cohorts = scenario["cohorts"]
    counts = [int(c["count"]) for c in cohorts]
    if devices is not None:
        total = sum(counts)
        shares = [c * devices / total for c in counts]
        floors = [int(s) for s in shares]
        left = devices - sum(floors)
        order = sorted(range(len(cohorts)), key=lambda i: (-(shares[i] - floors[i]), i))
        for i in order[:left]:
            floors[i] += 1
        counts = floors
    out, first = [], 0
    for c, n in zip(cohorts, counts):
        ppath = os.path.normpath(os.path.join(os.path.dirname(scen_path), c["profile"]))
        with open(ppath, "rb") as f:
            prof = tomllib.load(f)
        out.append((c["name"], first, n, prof["identity"]["device_id"], prof["name"]))
        first += n
    return out


def expected_slice(cohorts, k, n):
    rows = []
    for name, first, count, tpl, prof in cohorts:
        a = first + k * count // n
        b = first + (k + 1) * count // n
        ids = None
        if b > a:
            ids = (render_template(tpl, a, a - first, name, prof), render_template(tpl, b - 1, b - 1 - first, name, prof))
        rows.append((name, a, b, ids))
    return rows


LINE_RE = re.compile(r"^  (.+): ids (\d+)\.\.(\d+) \((\d+) devices(?:, (\S+) \.\. (\S+))?\)$")


def parse_dry_run(text):
    lines = text.rstrip("\n").split("\n")
    if len(lines) < 3 or lines[0] != "dry run: nothing is started":
        raise ValueError(f"first line {lines[0]!r}, want 'dry run: nothing is started'")
    m1 = re.fullmatch(r"scenario (.+), seed (\d+), (\d+) devices in (\d+) cohorts", lines[1])
    m2 = re.fullmatch(r"shard (\d+)/(\d+) owns (\d+) devices:", lines[2])
    if not m1 or not m2:
        raise ValueError(f"header {lines[1]!r} / {lines[2]!r} not as documented")
    rows = []
    for ln in lines[3:]:
        m = LINE_RE.match(ln)
        if not m:
            raise ValueError(f"cohort line {ln!r} not as documented")
        a, b, cnt = int(m.group(2)), int(m.group(3)), int(m.group(4))
        if cnt != b - a:
            raise ValueError(f"{ln!r}: count {cnt} != {b} - {a}")
        rows.append((m.group(1), a, b, (m.group(5), m.group(6)) if m.group(5) else None))
    return {"name": m1.group(1), "seed": int(m1.group(2)), "total": int(m1.group(3)),
            "cohorts": int(m1.group(4)), "k": int(m2.group(1)), "n": int(m2.group(2)),
            "owns": int(m2.group(3)), "rows": rows}


def indices_for(n):
    if n <= ALL_INDICES_UP_TO:
        return list(range(n)), True
    return sorted({0, n // 2, n - 1}), False


def sessions_per_pod(rd, cohorts):
    """The largest slice any pod gets (every cohort here has MQTT sessions: checked below)."""
    n = rd.shards_total()
    return max(sum(b - a for _, a, b, _ in expected_slice(cohorts, k, n)) for k in range(n))


def broker_facts(rd, scenario):
    _, flags = rd.args()
    urls = flags.get("--broker") or []
    if not urls:
        b = scenario.get("broker") or {}
        urls = ([b["url"]] if b.get("url") else []) + list(b.get("urls") or [])
    embedded = not urls
    tls = any(u.startswith(("mqtts://", "ssl://")) for u in urls)
    return urls, embedded, tls


def sizing_check(rd, scenario, cohorts):
    res = rd.container().get("resources", {})
    req, lim = res.get("requests", {}), res.get("limits", {})
    missing = [f"{w}.{r}" for w, d in (("requests", req), ("limits", lim)) for r in ("cpu", "memory") if r not in d]
    if missing:
        return False, f"resources missing: {', '.join(missing)}"
    problems = []
    for r in ("cpu", "memory"):
        if parse_quantity(req[r]) > parse_quantity(lim[r]):
            problems.append(f"{r} request {req[r]} > limit {lim[r]}")
    urls, embedded, tls = broker_facts(rd, scenario)
    m = sessions_per_pod(rd, cohorts)
    per = SESSION_BYTES + (EMBEDDED_BROKER_BYTES if embedded else 0) + (TLS_BYTES if tls else 0)
    need = m * per + PROCESS_BASE_BYTES
    if parse_quantity(req["memory"]) < need:
        problems.append(f"memory request {req['memory']} < {mib(need)} for {m} sessions x {per} B + {mib(PROCESS_BASE_BYTES)}")
    # Open files: one socket per session (two with the embedded broker) + the reserve.
    fds = m * (2 if embedded else 1) + RESERVED_FDS
    if fds > ASSUMED_NOFILE:
        problems.append(f"{fds} open files > the {ASSUMED_NOFILE} assumed for a container")
    # Source ports: one per session and (pod IP, broker address); the embedded broker is on
    # loopback, where fleetsim spreads sessions over 127.0.0.x itself.
    port_note = "embedded broker on loopback"
    if not embedded:
        sysctls = {s["name"]: s["value"] for s in
                   (rd.job()["spec"]["template"]["spec"].get("securityContext") or {}).get("sysctls", [])}
        lo, hi = (int(x) for x in sysctls.get("net.ipv4.ip_local_port_range", "%d %d" % DEFAULT_PORTS).split())
        ports = hi - lo + 1
        per_pair = -(-m // max(1, len(urls)))
        if per_pair > ports // 2:
            problems.append(f"{per_pair} sessions per (pod IP, broker address) > {ports // 2} even ports of "
                            f"{lo}-{hi}: connects get slow (docs/deployment.md)")
        port_note = f"{per_pair} sessions per (pod IP, listener) <= {ports // 2} even local ports of {lo}-{hi}"
    if problems:
        return False, "; ".join(problems)
    kind = "embedded broker" if embedded else ("TLS" if tls else "external broker")
    return True, (f"requests {req['cpu']}/{req['memory']}, limits {lim['cpu']}/{lim['memory']}; up to {m} sessions a pod "
                  f"({kind}: {per} B each + {mib(PROCESS_BASE_BYTES)} = {mib(need)} <= request); {fds} open files "
                  f"<= {ASSUMED_NOFILE}; {port_note}")


def validate_check(rd, fs, fleetsim):
    pos, _ = rd.args()
    scen = fs.rewrite(pos[1])
    p = run([fleetsim, "validate", scen], cwd=fs.workdir)
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0:
        return False, f"fleetsim validate exited {p.returncode}: {out[-500:]}"
    first = out.splitlines()[0].replace(fs.base, "").split(":", 1)[-1].strip()
    return True, f"fleetsim validate {pos[1]} (the ConfigMap's file, the image's folders beside it): ok, {first}"


def dry_run(rd, fs, fleetsim, k):
    cmd = pod_command(rd, fs, fleetsim)
    p = run(cmd, cwd=fs.workdir, env=pod_env(rd, k))
    return p


def slice_check(rd, fs, fleetsim, cohorts, scenario, k):
    n = rd.shards_total()
    _, flags = rd.args()
    devices = one(flags, "--devices")
    seed = int(one(flags, "--seed") or scenario.get("seed", 1))
    p = dry_run(rd, fs, fleetsim, k)
    if p.returncode != 0:
        return False, f"dry run exited {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}", None
    try:
        got = parse_dry_run(p.stdout)
    except ValueError as e:
        return False, f"{e}; output: {p.stdout.strip()[:400]!r}", None
    want = expected_slice(cohorts, k, n)
    total = sum(c for _, _, c, _, _ in cohorts)
    problems = []
    if (got["k"], got["n"]) != (k, n):
        problems.append(f"shard {got['k']}/{got['n']}, want {k}/{n}")
    if got["total"] != total or (devices and got["total"] != int(devices)):
        problems.append(f"{got['total']} devices in the fleet, want {total} (--devices {devices})")
    if got["cohorts"] != len(cohorts) or got["seed"] != seed or got["name"] != scenario.get("name"):
        problems.append(f"scenario {got['name']}, seed {got['seed']}, {got['cohorts']} cohorts: want "
                        f"{scenario.get('name')}, {seed}, {len(cohorts)}")
    if got["rows"] != want:
        diff = [f"{g} != {w}" for g, w in zip(got["rows"], want) if g != w]
        problems.append("slices differ: " + ("; ".join(diff[:3]) or f"{len(got['rows'])} cohort lines, want {len(want)}"))
    owns = sum(b - a for _, a, b, _ in want)
    if got["owns"] != owns:
        problems.append(f"owns {got['owns']}, want {owns}")
    if problems:
        return False, "; ".join(problems), got
    parts = ", ".join(f"{name} {a}..{b}" + (f" ({ids[0]} .. {ids[1]})" if ids else "") for name, a, b, ids in want)
    return True, f"shard {k}/{n} owns {owns}, slice {k} of {n} of each cohort: {parts}", got


def coverage_check(cohorts, outputs, n):
    problems = []
    seen_k = sorted(o["k"] for o in outputs)
    if seen_k != list(range(n)):
        return False, f"outputs for shards {seen_k}, want 0..{n - 1}"
    for ci, (name, first, count, _, _) in enumerate(cohorts):
        owned = [0] * count
        for o in outputs:
            _, a, b, _ = o["rows"][ci]
            for i in range(a, b):
                if not first <= i < first + count:
                    problems.append(f"{name}: shard {o['k']} owns id {i} outside {first}..{first + count}")
                    break
                owned[i - first] += 1
        twice = sum(1 for x in owned if x > 1)
        never = sum(1 for x in owned if x == 0)
        if twice or never:
            problems.append(f"{name}: {never} ids owned by no shard, {twice} by several")
    total = sum(c for _, _, c, _, _ in cohorts)
    if sum(o["owns"] for o in outputs) != total:
        problems.append(f"the shards own {sum(o['owns'] for o in outputs)} devices, the fleet has {total}")
    if problems:
        return False, "; ".join(problems[:4])
    return True, (f"{n} shards cover each of {len(cohorts)} cohorts' ids exactly once "
                  f"({', '.join(f'{c[0]} {c[1]}..{c[1] + c[2]}' for c in cohorts)}; {total} devices)")


# ---------------------------------------------------------------------------------------------

def rule_checks(rd, uid, scenario, cohorts):
    """The rules that need no process, by name: used on the real render and the self-test."""
    return {
        "job": lambda: job_shape(rd),
        "volumes": lambda: volumes_check(rd),
        "prometheus": lambda: prometheus_check(rd),
        "service": lambda: service_check(rd),
        "resources": lambda: sizing_check(rd, scenario, cohorts),
        "security": lambda: security_check(rd, uid),
        "deadline": lambda: deadline_check(rd, scenario),
    }


def check_kustomization(r, args, rel, stages, uid):
    label = rel.replace(DEPLOY + "/", "")
    t0 = time.monotonic()
    try:
        rd = render(args.kubectl, ROOT, rel)
    except Exception as e:
        r.check(f"{label}: renders", False, str(e))
        return None
    kinds = sorted({o["kind"] for o in rd.objects})
    r.check(f"{label}: renders", bool(rd.objects), f"kubectl kustomize: {len(rd.objects)} objects ({', '.join(kinds)})")
    r.check(f"{label}: schemas", *run_check(lambda: schema_check(rd, args.k8s_versions)))
    tmp = tempfile.mkdtemp(prefix=label.replace("/", "-") + "-", dir=args.tmp)
    try:
        fs = PodFs(rd, ROOT, tmp, stages, args.fleetsim)
        scen_path, scenario = load_scenario(fs, rd)
        _, flags = rd.args()
        devices = one(flags, "--devices")
        cohorts = expected_cohorts(scen_path, scenario, int(devices) if devices else None)
        for c in scenario["cohorts"]:
            if c.get("mqtt") is False:
                raise Skip(f"cohort {c['name']} has no MQTT: the sizing rules count sessions")
    except Exception as e:
        r.check(f"{label}: pod file system", False, f"{type(e).__name__}: {e}")
        return None
    for name, fn in rule_checks(rd, uid, scenario, cohorts).items():
        r.check(f"{label}: {name}", *run_check(fn))
    r.check(f"{label}: fleetsim validate", *run_check(lambda: validate_check(rd, fs, args.fleetsim)))
    try:
        n = rd.shards_total()
    except Skip as e:
        r.check(f"{label}: slices", False, str(e))
        return None
    ks, all_k = indices_for(n)
    outputs = []
    for k in ks:
        try:
            ok, detail, got = slice_check(rd, fs, args.fleetsim, cohorts, scenario, k)
        except Exception as e:
            ok, detail, got = False, f"{type(e).__name__}: {e}", None
        r.check(f"{label}: pod {k} of {n} (JOB_COMPLETION_INDEX={k}, --dry-run)", ok, detail)
        if got:
            outputs.append(got)
    if all_k:
        r.check(f"{label}: slices cover the fleet", *run_check(lambda: coverage_check(cohorts, outputs, n)))
    return rd, fs, scenario, cohorts, time.monotonic() - t0


def check_index_env(r, args, rd, fs):
    """A pod without JOB_COMPLETION_INDEX, or with one outside 0..N-1 or not a number, exits 2
    and names the variable."""
    n = rd.shards_total()
    for label, k in (("unset", None), (f"{n} (out of range)", n), ("'x'", "x")):
        def one_case(k=k):
            p = dry_run(rd, fs, args.fleetsim, k)
            msg = (p.stderr or "").strip()
            ok = p.returncode == 2 and "JOB_COMPLETION_INDEX" in msg and not p.stdout.strip()
            return ok, f"exit {p.returncode}: {msg.splitlines()[-1][:200] if msg else '(no message)'}"
        r.check(f"JOB_COMPLETION_INDEX {label}", *run_check(one_case))


def self_test(r, rd, uid, scenario, cohorts):
    """Broken copies of a good render: each must fail the rule named."""
    def broken(mutate):
        b = copy.deepcopy(rd)
        mutate(b)
        return b

    def job(b):
        return b.job()

    def ctr(b):
        return b.container()

    def set_arg(b, flag, value):
        a = ctr(b)["args"]
        a[a.index(flag) + 1] = value

    def drop_arg(b, flag):
        ctr(b)["args"].remove(flag)

    cases = [
        ("job", "completions != --shards-total", lambda b: job(b)["spec"].update(completions=job(b)["spec"]["completions"] + 1)),
        ("job", "parallelism != --shards-total", lambda b: job(b)["spec"].update(parallelism=1)),
        ("job", "NonIndexed", lambda b: job(b)["spec"].update(completionMode="NonIndexed")),
        ("job", "restartPolicy OnFailure", lambda b: job(b)["spec"]["template"]["spec"].update(restartPolicy="OnFailure")),
        ("volumes", "ConfigMap not in the render", lambda b: b.objects.remove(b.of_kind("ConfigMap")[0])),
        ("volumes", "scenario outside the ConfigMap's mount", lambda b: ctr(b)["args"].__setitem__(1, "/elsewhere/fleet.toml")),
        ("prometheus", "annotation port != container port", lambda b: job(b)["spec"]["template"]["metadata"]["annotations"].update({"prometheus.io/port": "9999"})),
        ("prometheus", "no scrape annotation", lambda b: job(b)["spec"]["template"]["metadata"]["annotations"].pop("prometheus.io/scrape")),
        ("prometheus", "--api-listen on another port", lambda b: set_arg(b, "--api-listen", "0.0.0.0:9465")),
        ("prometheus", "off loopback without --api-read-only", lambda b: drop_arg(b, "--api-read-only")),
        ("resources", "no limits", lambda b: ctr(b)["resources"].pop("limits")),
        ("resources", "memory request too small", lambda b: ctr(b)["resources"]["requests"].update(memory="16Mi")),
        ("resources", "a hundred times the devices", lambda b: set_arg(b, "--devices", str(100 * sum(c[2] for c in cohorts)))),
        ("service", "selector matches nothing", lambda b: b.of_kind("Service")[0]["spec"]["selector"].update({"app.kubernetes.io/component": "other"})),
        ("service", "not headless", lambda b: b.of_kind("Service")[0]["spec"].pop("clusterIP")),
        ("service", "no subdomain", lambda b: job(b)["spec"]["template"]["spec"].pop("subdomain")),
        ("security", "writable root", lambda b: ctr(b)["securityContext"].update(readOnlyRootFilesystem=False)),
        ("security", "runs as root", lambda b: job(b)["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False)),
        ("deadline", "deadline shorter than the run", lambda b: job(b)["spec"].update(activeDeadlineSeconds=60)),
    ]
    caught, missed = 0, []
    for rule, what, mutate in cases:
        def attempt(rule=rule, mutate=mutate):
            b = broken(mutate)
            if rule == "resources" and what.startswith("a hundred times"):
                _, flags = b.args()
                return sizing_check(b, scenario, expected_cohorts_scaled(cohorts, int(one(flags, "--devices"))))
            return rule_checks(b, uid, scenario, cohorts)[rule]()
        ok, _ = run_check(attempt)
        if ok:
            missed.append(f"{rule}: {what}")
        else:
            caught += 1
    # The slice comparison itself: a wrong slice and a gap/overlap are caught.
    n = rd.shards_total()
    outs = [{"k": k, "owns": sum(b - a for _, a, b, _ in expected_slice(cohorts, k, n)),
             "rows": expected_slice(cohorts, k, n)} for k in range(n)]
    if not coverage_check(cohorts, outs, n)[0]:
        missed.append("coverage: the computed slices themselves")
    bad = copy.deepcopy(outs)
    name, a, b, ids = bad[0]["rows"][0]
    bad[0]["rows"][0] = (name, a, b - 1, ids)
    bad[0]["owns"] -= 1
    if coverage_check(cohorts, bad, n)[0]:
        missed.append("coverage: a device owned by no shard")
    else:
        caught += 1
    bad = copy.deepcopy(outs)
    name, a, b, ids = bad[1]["rows"][0]
    bad[1]["rows"][0] = (name, a - 1, b, ids)
    bad[1]["owns"] += 1
    if coverage_check(cohorts, bad, n)[0]:
        missed.append("coverage: a device owned by two shards")
    else:
        caught += 1
    total = len(cases) + 2
    r.check("self-test: broken copies are caught", not missed,
            f"{caught} of {total} broken variants of {rd.name.replace(DEPLOY + '/', '')} caught by their rule"
            + (f"; missed: {missed}" if missed else ""))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, port, path, timeout=5):
    """(status, body) of a request to 127.0.0.1:port; status 0 when nothing answers."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return 0, ""


def live_pods(r, args, rd, fs, cohorts):
    """The overlay's pods for real, all at once as the Job starts them, --duration shortened to
    args.live_seconds and --api-listen on 127.0.0.1: the readiness probe's and the Prometheus
    annotations' paths answer on each, the API is read-only. Then pod 1 dies (SIGKILL, as the
    OOM killer does) and is started again on its index (the Job's retry): while it runs, a merge
    names its slice as missing (exit 3); once it ends, every pod has exited 0 with its results
    on the shared volume, and the results reader's `fleetsim report merge` gives the whole fleet,
    each slice where the dry run put it."""
    n = rd.shards_total()
    c = rd.container()
    probe = (c.get("readinessProbe") or {}).get("httpGet", {}).get("path")
    ann = rd.job()["spec"]["template"]["metadata"].get("annotations", {})
    procs, ports = [], []
    pos, flags = rd.args()
    results = fs.local(one(flags, "--results"))
    os.makedirs(results, exist_ok=True)
    label = rd.name.replace(DEPLOY + "/", "")

    def start_pod(k, attempt):
        port = free_port()
        cmd = pod_command(rd, fs, args.fleetsim)[:-1]  # without --dry-run
        cmd[cmd.index("--api-listen") + 1] = f"127.0.0.1:{port}"
        if "--duration" in cmd:
            cmd[cmd.index("--duration") + 1] = f"{args.live_seconds}s"
        else:
            cmd += ["--duration", f"{args.live_seconds}s"]
        with open(os.path.join(args.tmp, f"live-pod-{k}-{attempt}.log"), "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=fs.workdir, env=pod_env(rd, k), stdout=out, stderr=subprocess.STDOUT))
        ports.append(port)
        return procs[-1]

    def merge_cmd():
        # The command docs/deploy.md runs in the results reader pod.
        return [args.fleetsim, "report", "merge", results, "--report", os.path.join(results, "merged.json")]

    t0 = time.monotonic()
    try:
        for k in range(n):
            start_pod(k, 0)
        # Every pod's API answers (bounded): the probe's path, and the scrape's once the first
        # snapshot is there (503 "no snapshot yet" for about a second, as Prometheus would see).
        deadline = time.monotonic() + 30
        scrape_path = ann.get("prometheus.io/path", "/metrics")
        up = [False] * n
        while not all(up) and time.monotonic() < deadline:
            for k in range(n):
                if not up[k] and procs[k].poll() is None:
                    up[k] = (http("GET", ports[k], probe or "/api/v1/health", timeout=1)[0] == 200
                             and http("GET", ports[k], scrape_path, timeout=1)[0] == 200)
            time.sleep(0.2)
        probes, scrapes, posts = [], [], []
        for k in range(n):
            probes.append(http("GET", ports[k], probe)[0] if probe else None)
            st, body = http("GET", ports[k], scrape_path)
            scrapes.append((st, "fleetsim_devices" in body))
            posts.append(http("POST", ports[k], "/api/v1/pause")[0])
        r.check(f"{label}: live pods answer", all(p == 200 for p in probes)
                and all(s == (200, True) for s in scrapes) and all(not 200 <= p < 300 for p in posts),
                f"{n} pods: readiness probe GET {probe} -> {probes}; GET {ann.get('prometheus.io/path')} -> "
                f"{[s[0] for s in scrapes]} with fleetsim_devices: {[s[1] for s in scrapes]}; "
                f"POST /api/v1/pause -> {posts} (read-only: refused)")
        # Pod 1 is killed a third into its run and started again on its index.
        victim = 1 % n
        time.sleep(max(0.0, t0 + args.live_seconds / 3 - time.monotonic()))
        procs[victim].kill()
        killed_rc = procs[victim].wait()
        retry = start_pod(victim, 1)

        def wait(p):
            try:
                return p.wait(timeout=args.live_seconds + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                return p.wait()

        rcs = {k: wait(procs[k]) for k in range(n) if k != victim}
        if retry.poll() is None:
            p = run(merge_cmd(), cwd=fs.workdir)
            msg = (p.stdout + p.stderr)
            ok = p.returncode == 3 and f"{victim}/{n}" in msg
            r.check(f"{label}: a dead pod's slice is missing", ok,
                    f"pod {victim} killed (exit {killed_rc}) and retried; merge before the retry ends: exit {p.returncode} "
                    f"(want 3), names shard {victim}/{n}: {f'{victim}/{n}' in msg}")
        else:
            r.check(f"{label}: a dead pod's slice is missing", False,
                    f"the retried pod {victim} ended before the other pods: nothing to see (raise --live-seconds)")
        rcs[victim] = wait(retry)
        rcs = [rcs[k] for k in range(n)]
        files = sorted(os.listdir(results))
        want = sorted([f"shard-{k}-of-{n}.json" for k in range(n)] + [f"shard-{k}-of-{n}.hlog" for k in range(n)])
        r.check(f"{label}: live pods end", rcs == [0] * n and all(f in files for f in want),
                f"exit codes {rcs} (pod {victim} after its retry; want 0: SLOs met); {one(flags, '--results')} holds {files}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def merge():
        merged = os.path.join(results, "merged.json")
        p = run(merge_cmd(), cwd=fs.workdir)
        if p.returncode != 0:
            return False, f"report merge exited {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}"
        with open(merged) as f:
            rep = json.load(f)
        total = sum(c[2] for c in cohorts)
        problems = []
        if rep.get("complete") is not True or rep.get("ok") is not True:
            problems.append(f"complete {rep.get('complete')}, ok {rep.get('ok')}")
        if rep["devices"]["total"] != total or rep["run"].get("processes") != n:
            problems.append(f"devices.total {rep['devices']['total']} (want {total}), run.processes {rep['run'].get('processes')} (want {n})")
        for k, part in enumerate(rep.get("parts", [])):
            want_ranges = {name: [a, b] for name, a, b, _ in expected_slice(cohorts, k, n)}
            if part.get("shard") != f"{k}/{n}" or part.get("ranges") != want_ranges or part.get("status") != "ok":
                problems.append(f"part {k}: {part.get('shard')} {part.get('ranges')} {part.get('status')}, want {k}/{n} {want_ranges} ok")
        if len(rep.get("parts", [])) != n:
            problems.append(f"{len(rep.get('parts', []))} parts, want {n}")
        if problems:
            return False, "; ".join(problems)
        pub = rep["messages"]["published"]
        return True, (f"fleetsim report merge {one(flags, '--results')}: exit 0, complete, {total} devices in {n} parts at "
                      f"the dry run's ranges, {pub} messages published, SLOs met on the whole fleet")

    r.check(f"{label}: results merge", *run_check(merge))


def expected_cohorts_scaled(cohorts, devices):
    """`cohorts` scaled to `devices` in proportion (for the self-test's bigger fleet)."""
    total = sum(c[2] for c in cohorts)
    out, first = [], 0
    for name, _, count, tpl, prof in cohorts:
        n = count * devices // total
        out.append((name, first, n, tpl, prof))
        first += n
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleetsim", required=True, help="the fleetsim binary")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--tmp", required=True, help="a folder for the pods' file systems")
    p.add_argument("--test", default=TEST)
    p.add_argument("--live-seconds", type=int, default=15,
                   help="run overlays/smoke's pods for real this long (0: skip)")
    p.add_argument("--k8s-versions", default=",".join(K8S_VERSIONS),
                   help="Kubernetes versions to validate the objects against (comma-separated)")
    args = p.parse_args()
    args.k8s_versions = tuple(v for v in args.k8s_versions.split(",") if v)
    args.fleetsim = os.path.abspath(args.fleetsim)
    os.makedirs(args.tmp, exist_ok=True)
    r = Results(args.test)
    t0 = time.monotonic()

    check_dockerfile(r, ROOT)
    try:
        stages = read_dockerfile(ROOT)
        user = (stages[-1]["user"] or "").split(":")[0]
        uid = int(user) if user.isdigit() else None
    except Exception as e:
        r.check("Dockerfile read", False, str(e))
        return 1

    rels = [os.path.join(DEPLOY, "base")]
    odir = os.path.join(ROOT, DEPLOY, "overlays")
    for name in sorted(os.listdir(odir)) if os.path.isdir(odir) else []:
        if os.path.isfile(os.path.join(odir, name, "kustomization.yaml")):
            rels.append(os.path.join(DEPLOY, "overlays", name))
    r.check("kustomizations found", len(rels) >= 4,
            f"{len(rels)}: {', '.join(x.replace(DEPLOY + '/', '') for x in rels)}")
    results = {}
    for rel in rels:
        got = check_kustomization(r, args, rel, stages, uid)
        if got:
            results[rel] = got
    smoke = results.get(os.path.join(DEPLOY, "overlays", "smoke"))
    if smoke:
        rd, fs, scenario, cohorts, _ = smoke
        check_index_env(r, args, rd, fs)
        self_test(r, rd, uid, scenario, cohorts)
        if args.live_seconds > 0:
            live_pods(r, args, rd, fs, cohorts)
    else:
        r.check("overlays/smoke", False, "missing or broken: the index and self-test checks need it")
    print(f"{args.test}  {r.passed + r.failed} checks in {time.monotonic() - t0:.1f} s", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
