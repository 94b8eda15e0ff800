#!/usr/bin/env python3
"""Offline policy checks for saudial's job definitions (run by deploy/validate.sh).

Schema validation of the Kubernetes manifests (kubernetes-validate) and of the
workflow (check-jsonschema / actionlint) is done by validate.sh; this script
checks what a schema cannot: that the definitions implement the image's
contract (exit codes, resume, secrets, volumes, security), and validates the
SkyPilot task YAML against a schema transcribed from SkyPilot's own task
schema (sky/utils/schemas.py) and YAML reference, because the `skypilot`
package itself is too heavy to install for a lint step.

Usage: check_deploy.py {kubernetes,skypilot,workflow} [--root DIR]
Exit status 0 when every check passes, 1 otherwise (all problems listed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

IMAGE_UID = 1000
RETRY_EXIT = 75  # SIGTERM received, checkpoint written: resume
NO_RETRY_EXITS = {2, 3, 4}  # bad config/data, training failure, hub push failed


class Problems:
    def __init__(self, label: str) -> None:
        self.label = label
        self.items: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.items.append(message)

    def report(self) -> int:
        for item in self.items:
            print(f"FAIL [{self.label}] {item}", file=sys.stderr)
        if not self.items:
            print(f"ok   [{self.label}]")
        return 1 if self.items else 0


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# --------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------


def _check_job_spec(p: Problems, where: str, spec: dict, container_name: str) -> None:
    pod = spec.get("template", {}).get("spec", {})
    p.check(pod.get("restartPolicy") == "Never", f"{where}: restartPolicy must be Never (required by podFailurePolicy)")
    p.check(isinstance(spec.get("backoffLimit"), int), f"{where}: set backoffLimit")
    p.check(isinstance(spec.get("activeDeadlineSeconds"), int), f"{where}: set activeDeadlineSeconds")
    p.check(isinstance(spec.get("ttlSecondsAfterFinished"), int), f"{where}: set ttlSecondsAfterFinished")
    p.check(
        spec.get("podReplacementPolicy") == "Failed",
        f"{where}: podReplacementPolicy must be Failed (no two pods on one output dir)",
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    p.check(
        grace >= 120,
        f"{where}: terminationGracePeriodSeconds {grace} too short to finish a step and write a checkpoint (>= 120)",
    )

    # podFailurePolicy: first matching rule wins, so look at the first rule
    # that matches each exit code / condition.
    rules = spec.get("podFailurePolicy", {}).get("rules", [])

    def action_for_exit(code: int):
        for rule in rules:
            req = rule.get("onExitCodes")
            if not req:
                continue
            if req.get("containerName") not in (None, container_name):
                continue
            values = set(req.get("values", []))
            hit = code in values if req.get("operator") == "In" else code not in values
            if hit:
                return rule.get("action")
        return "Count"

    def action_for_condition(ctype: str):
        for rule in rules:
            for pat in rule.get("onPodConditions") or []:
                if pat.get("type") == ctype and pat.get("status", "True") == "True":
                    return rule.get("action")
        return "Count"

    for code in sorted(NO_RETRY_EXITS):
        p.check(
            action_for_exit(code) == "FailJob", f"{where}: exit code {code} must FailJob, got {action_for_exit(code)}"
        )
    p.check(
        action_for_exit(RETRY_EXIT) == "Ignore",
        f"{where}: exit code {RETRY_EXIT} must be Ignore (resume without "
        f"burning backoffLimit), got {action_for_exit(RETRY_EXIT)}",
    )
    p.check(
        action_for_condition("DisruptionTarget") == "Ignore",
        f"{where}: DisruptionTarget (preemption/eviction) must be Ignore",
    )
    p.check(action_for_exit(1) == "Count", f"{where}: unexpected crashes (exit 1) must Count")

    sc = pod.get("securityContext", {})
    p.check(sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot must be true")
    p.check(sc.get("runAsUser") == IMAGE_UID, f"{where}: runAsUser must be {IMAGE_UID}")
    p.check(sc.get("fsGroup") == IMAGE_UID, f"{where}: fsGroup must be {IMAGE_UID}")

    containers = {c.get("name"): c for c in pod.get("containers", [])}
    c = containers.get(container_name)
    p.check(c is not None, f"{where}: no container named {container_name}")
    if c is None:
        return
    p.check(
        c.get("securityContext", {}).get("allowPrivilegeEscalation") is False,
        f"{where}: allowPrivilegeEscalation must be false",
    )
    env = {e.get("name"): e for e in c.get("env", [])}
    token = env.get("HF_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    p.check(bool(token), f"{where}: HF_TOKEN must come from a Secret (secretKeyRef)")
    p.check("value" not in env.get("HF_TOKEN", {}), f"{where}: HF_TOKEN must not be inline")

    volumes = {v.get("name"): v for v in pod.get("volumes", [])}
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts", [])}

    def volume_at(path: str):
        m = mounts.get(path)
        return (m, volumes.get(m.get("name"))) if m else (None, None)

    m, v = volume_at("/outputs")
    p.check(bool(v and "persistentVolumeClaim" in v), f"{where}: /outputs must be a PersistentVolumeClaim")
    if container_name == "train":
        p.check(
            c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") is not None,
            f"{where}: set a nvidia.com/gpu limit",
        )
        m, v = volume_at("/cache")
        p.check(
            bool(v and "persistentVolumeClaim" in v), f"{where}: the HF cache (/cache) must be a PersistentVolumeClaim"
        )
        m, v = volume_at("/data")
        p.check(bool(m and m.get("readOnly") is True), f"{where}: /data must be mounted readOnly")
        p.check(bool(v and "persistentVolumeClaim" in v), f"{where}: /data must be a PVC")
        m, v = volume_at("/dev/shm")
        p.check(
            bool(v and v.get("emptyDir", {}).get("medium") == "Memory"),
            f"{where}: /dev/shm must be an emptyDir with medium Memory",
        )
        p.check(
            env.get("SAUDIAL_RESUME", {}).get("value") == "auto",
            f"{where}: SAUDIAL_RESUME must be auto so restarted pods resume",
        )
        outdir = env.get("SAUDIAL_OUTPUT_DIR", {}).get("value", "")
        p.check(outdir.startswith("/outputs"), f"{where}: SAUDIAL_OUTPUT_DIR must be under /outputs")


def check_kubernetes(root: Path) -> int:
    p = Problems("kubernetes policy")
    kdir = root / "deploy" / "kubernetes"
    docs = {}
    for f in sorted(kdir.glob("*.yaml")):
        for d in load_all(f):
            docs[(d.get("kind"), d.get("metadata", {}).get("name"))] = (f.name, d)

    job = docs.get(("Job", "saudial-train"))
    cron = docs.get(("CronJob", "saudial-train-scheduled"))
    push = docs.get(("Job", "saudial-push"))
    p.check(job is not None, "job.yaml: Job saudial-train missing")
    p.check(cron is not None, "cronjob.yaml: CronJob saudial-train-scheduled missing")
    if job:
        _check_job_spec(p, job[0], job[1]["spec"], "train")
    if cron:
        cspec = cron[1]["spec"]
        p.check(cspec.get("concurrencyPolicy") == "Forbid", f"{cron[0]}: concurrencyPolicy must be Forbid")
        jspec = cspec.get("jobTemplate", {}).get("spec", {})
        _check_job_spec(p, cron[0], jspec, "train")
        if job:
            p.check(
                jspec == job[1]["spec"],
                f"{cron[0]}: jobTemplate.spec differs from job.yaml's spec; keep them identical",
            )
    if push:
        pspec = push[1]["spec"]
        pod = pspec.get("template", {}).get("spec", {})
        p.check(pod.get("restartPolicy") == "Never", f"{push[0]}: restartPolicy must be Never")
        c = (pod.get("containers") or [{}])[0]
        p.check(c.get("args", [])[:1] == ["push"], f"{push[0]}: args must start with push")

    secrets = [(f, d) for (k, _), (f, d) in docs.items() if k == "Secret"]
    for f, d in secrets:
        values = list((d.get("stringData") or {}).values()) + list((d.get("data") or {}).values())
        p.check(
            all("REPLACE" in str(v) for v in values),
            f"{f}: Secret must only hold placeholder values (found a real-looking value)",
        )
    return p.report()


# --------------------------------------------------------------------------
# SkyPilot
# --------------------------------------------------------------------------

_EXIT_CODE = {"type": "integer", "minimum": 0, "maximum": 255}
_STR_OR_NUM = {"anyOf": [{"type": "string"}, {"type": "number"}]}
_ACCELERATORS = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
    ]
}
_JOB_RECOVERY = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "strategy": {"anyOf": [{"enum": ["FAILOVER", "EAGER_NEXT_REGION"]}, {"type": "null"}]},
                "max_restarts_on_errors": {"type": "integer", "minimum": 0},
                "recover_on_exit_codes": {
                    "anyOf": [_EXIT_CODE, {"type": "array", "items": _EXIT_CODE, "uniqueItems": True}]
                },
            },
        },
    ]
}
_RESOURCE_PROPS = {
    "cloud": {"type": "string"},
    "region": {"type": "string"},
    "zone": {"type": "string"},
    "infra": {"type": "string"},
    "cpus": _STR_OR_NUM,
    "memory": _STR_OR_NUM,
    "accelerators": _ACCELERATORS,
    "accelerator_args": {"type": "object"},
    "instance_type": {"type": "string"},
    "use_spot": {"type": "boolean"},
    "job_recovery": _JOB_RECOVERY,
    "disk_size": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "disk_tier": {"enum": ["low", "medium", "high", "ultra", "best"]},
    "network_tier": {"enum": ["standard", "best"]},
    "ports": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "array"}]},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "image_id": {"anyOf": [{"type": "string"}, {"type": "object"}]},
    "autostop": {"anyOf": [{"type": "boolean"}, {"type": "integer"}, {"type": "string"}, {"type": "object"}]},
    "priority": {"type": "integer"},
    "max_hourly_cost": {"type": "number"},
}
_RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **_RESOURCE_PROPS,
        "any_of": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": False, "properties": _RESOURCE_PROPS},
        },
        "ordered": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": False, "properties": _RESOURCE_PROPS},
        },
    },
}
_FILE_MOUNT = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "source": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "store": {"type": "string"},
                "persistent": {"type": "boolean"},
                "mode": {"enum": ["MOUNT", "COPY", "MOUNT_CACHED"]},
                "type": {"type": "string"},
                "config": {"type": "object"},
                "_bucket_sub_path": {"type": "string"},
            },
        },
    ]
}
_ENV_MAP = {
    "type": "object",
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}
SKYPILOT_TASK_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "workdir": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "event_callback": {"type": "string"},
        "num_nodes": {"type": "integer", "minimum": 1},
        "resources": _RESOURCES,
        "file_mounts": {"type": "object", "additionalProperties": _FILE_MOUNT},
        "volumes": {"type": "object"},
        "service": {"type": "object"},
        "setup": {"type": "string"},
        "run": {"type": "string"},
        "envs": _ENV_MAP,
        "secrets": _ENV_MAP,
        "inputs": {"type": "object"},
        "outputs": {"type": "object"},
        "config": {"type": "object"},
        "api_server_access": {"type": "boolean"},
        "pool": {"type": "object"},
    },
}


def _shell_ok(p: Problems, label: str, script: str) -> None:
    try:
        r = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        p.check(r.returncode == 0, f"{label}: bash syntax error: {r.stderr.strip()}")
    except FileNotFoundError:
        pass
    try:
        r = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, text=True, capture_output=True)
        p.check(r.returncode == 0, f"{label}: shellcheck:\n{r.stdout.strip()}")
    except FileNotFoundError:
        print(f"note [{label}] shellcheck not found; only bash -n was run")


def check_skypilot(root: Path) -> int:
    p = Problems("skypilot")
    path = root / "deploy" / "skypilot" / "train.yaml"
    docs = load_all(path)
    p.check(len(docs) == 1, f"{path.name}: expected one YAML document, got {len(docs)}")
    if not docs:
        return p.report()
    task = docs[0]
    validator = jsonschema.Draft202012Validator(SKYPILOT_TASK_SCHEMA)
    for err in sorted(validator.iter_errors(task), key=lambda e: list(e.path)):
        loc = "/".join(str(x) for x in err.path) or "(top level)"
        p.check(False, f"{path.name}: {loc}: {err.message}")

    res = task.get("resources") or {}
    p.check(res.get("use_spot") is True, "resources.use_spot must be true")
    p.check(bool(res.get("accelerators")), "resources.accelerators must be set")
    jr = res.get("job_recovery")
    p.check(isinstance(jr, dict), "resources.job_recovery must be a mapping")
    if isinstance(jr, dict):
        codes = jr.get("recover_on_exit_codes")
        codes = [codes] if isinstance(codes, int) else (codes or [])
        p.check(RETRY_EXIT in codes, f"job_recovery.recover_on_exit_codes must include {RETRY_EXIT}")
        p.check(
            not (set(codes) & NO_RETRY_EXITS),
            f"job_recovery.recover_on_exit_codes must not include {sorted(NO_RETRY_EXITS)}",
        )
        p.check(
            jr.get("max_restarts_on_errors", 0) == 0,
            "job_recovery.max_restarts_on_errors must be 0 (exit 2/3 are never retried)",
        )
    p.check("HF_TOKEN" in (task.get("secrets") or {}), "HF_TOKEN must be declared under secrets")
    p.check("HF_TOKEN" not in (task.get("envs") or {}), "HF_TOKEN must not be a plain env")
    outputs = (task.get("file_mounts") or {}).get("/outputs")
    p.check(
        isinstance(outputs, dict) and outputs.get("mode") in ("MOUNT", "MOUNT_CACHED"),
        "file_mounts./outputs must be a bucket in MOUNT or MOUNT_CACHED mode",
    )
    run = task.get("run") or ""
    p.check("docker run" in run and "--gpus" in run, "run must start the image with docker run --gpus")
    p.check("/outputs:/outputs" in run, "run must bind-mount /outputs into the container")
    p.check("SAUDIAL_OUTPUT_DIR" in run, "run must set SAUDIAL_OUTPUT_DIR")
    p.check((task.get("envs") or {}).get("SAUDIAL_RESUME") == "auto", "envs.SAUDIAL_RESUME must be auto")
    _shell_ok(p, "skypilot setup", task.get("setup") or "")
    _shell_ok(p, "skypilot run", run)
    return p.report()


# --------------------------------------------------------------------------
# GitHub workflow (policy; schema and actionlint run from validate.sh)
# --------------------------------------------------------------------------


def check_workflow(root: Path) -> int:
    p = Problems("workflow policy")
    src = root / "deploy" / "github" / "workflows" / "publish-image.yml"
    live = root / ".github" / "workflows" / "publish-image.yml"
    p.check(src.exists(), f"{src} missing")
    if live.exists() and src.exists():
        p.check(
            live.read_text() == src.read_text(),
            ".github/workflows/publish-image.yml differs from deploy/github/workflows/publish-image.yml",
        )
    if not src.exists():
        return p.report()
    wf = yaml.safe_load(src.read_text())
    on = wf.get(True, wf.get("on")) or {}  # YAML 1.1 reads the key `on` as True
    tags = (on.get("push") or {}).get("tags") or []
    p.check("v*" in tags, "workflow must run on push of tags v*")
    for name, job in (wf.get("jobs") or {}).items():
        perms = job.get("permissions") or wf.get("permissions") or {}
        steps = job.get("steps") or []
        uses = [s.get("uses", "") for s in steps if "uses" in s]
        for u in uses:
            ref = u.partition("@")[2]
            p.check(
                bool(ref) and ref not in ("main", "master", "latest"),
                f"jobs.{name}: {u} must be pinned to a major tag or a commit SHA",
            )
        bp = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")]
        if bp:
            p.check(perms.get("packages") == "write", f"jobs.{name}: needs permissions packages: write")
            w = bp[0].get("with") or {}
            p.check(str(w.get("push")).lower() == "true", f"jobs.{name}: build-push-action must push")
            p.check("labels" in w, f"jobs.{name}: build-push-action must set labels")
            p.check(
                str(w.get("provenance", "")).lower() not in ("", "false"),
                f"jobs.{name}: build-push-action must set provenance",
            )
            p.check(
                any(u.startswith("docker/login-action@") for u in uses), f"jobs.{name}: must log in to the registry"
            )
    p.check(
        any(
            s.get("uses", "").startswith("docker/build-push-action@")
            for j in (wf.get("jobs") or {}).values()
            for s in (j.get("steps") or [])
        ),
        "workflow must use docker/build-push-action",
    )
    return p.report()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["kubernetes", "skypilot", "workflow"])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    a = ap.parse_args()
    try:
        return {"kubernetes": check_kubernetes, "skypilot": check_skypilot, "workflow": check_workflow}[a.what](a.root)
    except (yaml.YAMLError, OSError, KeyError, TypeError, AttributeError) as exc:
        print(f"FAIL [{a.what}] could not check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
