"""Our own rules over rendered manifests, beyond what the schemas check.

Each check takes the rendered objects and returns violations as readable
lines (empty when all is well), so a test can assert on an empty list and
show every problem at once, and a unit test can feed it a broken object.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from stageflow import kinds
from stageflow.cli.settings import CLI_SETTINGS
from stageflow.gateway.settings import GatewaySettings
from stageflow.orchestrator.settings import OrchestratorSettings
from stageflow.serving.settings import StageSettings

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
# Each registered stage kind runs as its own Deployment, `stage-<kind>`.
STAGE_COMPONENTS = tuple(f"stage-{kind.name}" for kind in kinds.all_kinds())
COMPONENT = "app.kubernetes.io/component"
GRPC_PORT = 50051
GPU = "nvidia.com/gpu"
GPU_POOL = "stageflow.io/gpu-pool"
# The pod label of the orchestrator's internal clients (besides the gateway).
ORCHESTRATOR_CLIENT = "stageflow.io/orchestrator-client"
# Where the `stageflow` CLI names env vars it reads other than through
# stageflow.cli.settings (typer's envvar=, stageflow.cli.telemetry).
CLI_SOURCES = (REPO / "stageflow" / "cli",)
# Kubernetes' default when a pod names none.
DEFAULT_TERMINATION_GRACE = 30


def _name(doc: Manifest) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_spec(doc: Manifest) -> Manifest | None:
    if doc.get("kind") not in WORKLOAD_KINDS:
        return None
    spec: Manifest = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def pod_labels(doc: Manifest) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"].get("metadata", {}).get("labels", {})
    return labels


def containers(doc: Manifest) -> Iterator[tuple[str, Manifest, Manifest]]:
    """(where, container, pod spec) of every container and init container."""
    spec = pod_spec(doc)
    if spec is None:
        return
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            yield f"{_name(doc)} {key[:-1]} {container.get('name')}", container, spec


def all_containers(docs: list[Manifest]) -> Iterator[tuple[str, Manifest, Manifest]]:
    for doc in docs:
        yield from containers(doc)


def env_values(container: Manifest) -> dict[str, str | None]:
    """Env name → literal value (None when it comes from a Secret or ConfigMap)."""
    return {e["name"]: e.get("value") for e in container.get("env") or []}


# -- resources ---------------------------------------------------------------


def check_resources(docs: list[Manifest]) -> list[str]:
    """Every container, init containers and Jobs included, requests and limits
    both CPU and memory."""
    problems = []
    for where, container, _ in all_containers(docs):
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (resources.get(kind) or {})]
            if missing:
                problems.append(f"{where}: no {kind} for {', '.join(missing)}")
    return problems


# -- probes ------------------------------------------------------------------


def _runs_stageflow_server(container: Manifest) -> bool:
    return _process(container)[0] in ("stage", "orchestrator")


def check_probes(docs: list[Manifest]) -> list[str]:
    """Long-running containers have liveness and readiness probes; stage and
    orchestrator containers use native gRPC probes on 50051 (grpc.health.v1),
    startup probe included."""
    problems = []
    for doc in docs:
        if doc.get("kind") not in LONG_RUNNING_KINDS:
            continue
        for where, container, _ in containers(doc):
            if "initContainer" in where:
                continue
            kinds: tuple[str, ...] = ("livenessProbe", "readinessProbe")
            if _runs_stageflow_server(container):
                kinds += ("startupProbe",)
            for kind in kinds:
                probe = container.get(kind)
                if not probe:
                    problems.append(f"{where}: no {kind}")
                elif _runs_stageflow_server(container) and (
                    (probe.get("grpc") or {}).get("port") != GRPC_PORT
                ):
                    problems.append(f"{where}: {kind} is not a gRPC probe on {GRPC_PORT}")
                elif _process(container)[0] == "gateway":
                    path = (probe.get("httpGet") or {}).get("path")
                    wanted = "/readyz" if kind == "readinessProbe" else "/healthz"
                    if path != wanted:
                        problems.append(f"{where}: {kind} is not an HTTP probe of {wanted}")
    return problems


# -- security ----------------------------------------------------------------


def check_security(docs: list[Manifest], uid: int = 10001) -> list[str]:
    """Non-root (uid 10001), read-only root filesystem, no privilege
    escalation, no capabilities, the runtime's seccomp profile: for every
    container, the container's securityContext overriding the pod's."""
    problems = []
    for where, container, spec in all_containers(docs):
        pod = spec.get("securityContext") or {}
        own = container.get("securityContext") or {}

        def effective(key: str, own: Manifest = own, pod: Manifest = pod) -> Any:
            return own.get(key, pod.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if effective("runAsUser") != uid:
            problems.append(f"{where}: runAsUser is {effective('runAsUser')}, not {uid}")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if own.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((own.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    return problems


# -- GPU scheduling ----------------------------------------------------------


def _selects_gpu_pool(spec: Manifest) -> bool:
    if GPU_POOL in (spec.get("nodeSelector") or {}):
        return True
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    return any(
        expr.get("key") == GPU_POOL
        for term in required.get("nodeSelectorTerms") or []
        for expr in term.get("matchExpressions") or []
    )


def check_gpu_stages(docs: list[Manifest]) -> list[str]:
    """Every stage Deployment lands on its own GPU pool, tolerates the NVIDIA
    taint and asks for a GPU."""
    problems = []
    stages = [
        d for d in docs if d.get("kind") == "Deployment" and _component(d) in STAGE_COMPONENTS
    ]
    if not stages:
        problems.append("no stage Deployments")
    pools: dict[str, str] = {}
    for doc in stages:
        spec = pod_spec(doc) or {}
        if not _selects_gpu_pool(spec):
            problems.append(f"{_name(doc)}: no {GPU_POOL} nodeSelector or required affinity")
        else:
            pool = (spec.get("nodeSelector") or {}).get(GPU_POOL, "")
            if pool and pool in pools:
                problems.append(f"{_name(doc)}: shares GPU pool {pool!r} with {pools[pool]}")
            pools[pool] = _name(doc)
        tolerations = spec.get("tolerations") or []
        if not any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in tolerations):
            problems.append(f"{_name(doc)}: no toleration for the {GPU} NoSchedule taint")
        for where, container, _ in containers(doc):
            limits = (container.get("resources") or {}).get("limits") or {}
            if "initContainer" not in where and int(limits.get(GPU, 0)) < 1:
                problems.append(f"{where}: no {GPU} limit")
    return problems


# -- selectors ---------------------------------------------------------------


def _component(doc: Manifest) -> str | None:
    try:
        return pod_labels(doc).get(COMPONENT)
    except KeyError:
        return None


def check_selectors(docs: list[Manifest]) -> list[str]:
    """Every Service and PDB selector matches the pod labels of some
    Deployment/StatefulSet (same namespace), every workload's selector its own
    template, and every HPA targets a workload that exists."""
    workloads = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")]

    def namespace(doc: Manifest) -> str | None:
        ns: str | None = doc.get("metadata", {}).get("namespace")
        return ns

    def matched(selector: Mapping[str, str], ns: str | None) -> bool:
        return any(
            namespace(w) == ns and selector.items() <= pod_labels(w).items() for w in workloads
        )

    problems = []
    for doc in docs:
        kind, ns = doc.get("kind"), namespace(doc)
        if kind == "Service":
            selector = doc.get("spec", {}).get("selector") or {}
            if not selector or not matched(selector, ns):
                problems.append(f"{_name(doc)}: selector {selector} matches no workload's pods")
        elif kind == "PodDisruptionBudget":
            selector = doc["spec"].get("selector", {}).get("matchLabels") or {}
            if not selector or not matched(selector, ns):
                problems.append(f"{_name(doc)}: selector {selector} matches no workload's pods")
        elif kind in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"].get("matchLabels") or {}
            if not selector.items() <= pod_labels(doc).items():
                problems.append(f"{_name(doc)}: selector {selector} misses its own pod labels")
        elif kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if not any(
                w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] for w in workloads
            ):
                problems.append(f"{_name(doc)}: scales {ref['kind']}/{ref['name']}, not rendered")
    return problems


# -- environment -------------------------------------------------------------


def _command(container: Manifest) -> list[str]:
    return [*(container.get("command") or []), *(container.get("args") or [])]


def _process(container: Manifest) -> tuple[str, str]:
    """What the container runs: ("stage", kind) for `python -m
    stageflow.services.KIND` or `python -m stageflow.stage KIND`,
    ("orchestrator", ""), ("cli", "") for the `stageflow` command (directly or
    in a shell script), else ("other", "")."""
    command = _command(container)
    if command[:2] == ["python", "-m"] and len(command) > 2:
        module = command[2]
        if module.startswith("stageflow.services."):
            return "stage", module.removeprefix("stageflow.services.")
        if module == "stageflow.stage" and len(command) > 3:
            return "stage", command[3]
        if module == "stageflow.orchestrator":
            return "orchestrator", ""
        if module == "stageflow.gateway":
            return "gateway", ""
    if command and command[0] == "stageflow":
        return "cli", ""
    # A shell script with a line starting `stageflow ...` (a Job's steps).
    if command[:2] == ["/bin/sh", "-c"] and any(
        re.search(r"^\s*stageflow\s", script, re.MULTILINE) for script in command[2:]
    ):
        return "cli", ""
    return "other", ""


def service_defaults(kind: str) -> dict[str, Any]:
    """The settings defaults a stage of `kind` starts with (model_family,
    model_path), from its declaration; `kind` may be its services module."""
    from stageflow.stage.main import kind_defaults

    return kind_defaults(kinds.get(kind.removeprefix("stageflow.services.")))


@cache
def cli_env_names() -> frozenset[str]:
    """Every STAGEFLOW_* name the CLI reads: the fields of its settings classes
    (stageflow.cli.settings), and the names in its source (a quoted literal:
    `envvar="STAGEFLOW_ADDRESS"`, the tracing variables of stageflow.cli.telemetry)."""
    names: set[str] = set()
    for cls in CLI_SETTINGS:
        prefix = str(cls.model_config.get("env_prefix", ""))
        names.update(prefix + field.upper() for field in cls.model_fields)
    for source in CLI_SOURCES:
        for path in [source] if source.is_file() else sorted(source.rglob("*.py")):
            names.update(re.findall(r"[\"'](STAGEFLOW_[A-Z0-9_]+)[\"']", path.read_text()))
    return frozenset(names)


# What a value from a Secret stands for when the settings are validated: long
# enough for a secret's minimum length (auth_secret_key: 32), and for a URL
# setting, a URL of the kind the Secret holds (the job store's: CloudNativePG's `uri`).
SECRET_PLACEHOLDER = "value-from-a-kubernetes-secret-0123456789"
SECRET_PLACEHOLDERS = {"job_store_url": "postgresql://app:secret@stageflow-db-rw:5432/app"}


def check_settings(
    where: str, env: dict[str, str | None], cls: type[BaseModel], defaults: dict[str, Any]
) -> list[str]:
    """`env` (None: a value from a Secret) against a settings class, given the
    process's own defaults: unknown names, missing required fields, bad values."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    fields = {prefix + name.upper(): name for name in cls.model_fields}
    problems = [
        f"{where}: {name} is not a field of {cls.__name__}"
        for name in env
        if name.startswith(prefix) and name not in fields
    ]
    values = {
        fields[name]: SECRET_PLACEHOLDERS.get(fields[name], SECRET_PLACEHOLDER)
        if value is None
        else value
        for name, value in env.items()
        if name in fields
    }
    for name, info in cls.model_fields.items():
        if info.is_required() and name not in values and name not in defaults:
            problems.append(f"{where}: required {prefix}{name.upper()} is not set")
    if not problems:
        try:
            # model_validate, not the constructor: no environment of this
            # test process leaks in.
            cls.model_validate({**defaults, **values})
        except ValidationError as err:
            for e in err.errors():
                field = prefix + str(e["loc"][0]).upper() if e["loc"] else cls.__name__
                problems.append(f"{where}: {field}: {e['msg']}")
    return problems


def check_env(docs: list[Manifest]) -> list[str]:
    """Every STAGEFLOW_* variable a container sets is a setting of the process
    it runs (StageSettings for services.*, OrchestratorSettings for the
    orchestrator, a name the CLI reads for `stageflow ...`), the values
    validate, and every required setting is set."""
    problems = []
    for where, container, _ in all_containers(docs):
        env = env_values(container)
        kind, module = _process(container)
        if kind == "stage":
            problems += check_settings(where, env, StageSettings, service_defaults(module))
        elif kind == "orchestrator":
            problems += check_settings(where, env, OrchestratorSettings, {})
        elif kind == "gateway":
            problems += check_settings(where, env, GatewaySettings, {})
        else:
            known = cli_env_names() if kind == "cli" else frozenset()
            problems += [
                f"{where}: {name} is read by nothing this container runs"
                for name in env
                if name.startswith("STAGEFLOW_") and name not in known
            ]
    return problems


# -- shutdown ----------------------------------------------------------------


def _prestop_sleep(container: Manifest) -> float | None:
    command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get(
        "command"
    ) or []
    found = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", " ".join(command))
    return float(found.group(1)) if found else None


def check_shutdown(docs: list[Manifest]) -> list[str]:
    """Stage and orchestrator containers flip health first (preStop: SIGUSR1
    to PID 1, then sleep), and the pod's terminationGracePeriodSeconds exceeds
    that sleep plus the server's drain grace (STAGEFLOW_GRACE_SECONDS)."""
    problems = []
    for where, container, spec in all_containers(docs):
        kind, _ = _process(container)
        if kind not in ("stage", "orchestrator"):
            continue
        command = " ".join(
            (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get(
                "command"
            )
            or []
        )
        sleep = _prestop_sleep(container)
        if "kill -USR1 1" not in command or sleep is None:
            problems.append(f"{where}: preStop does not `kill -USR1 1 && sleep N`")
            sleep = 0.0
        cls = StageSettings if kind == "stage" else OrchestratorSettings
        grace_env = env_values(container).get("STAGEFLOW_GRACE_SECONDS")
        grace = float(grace_env) if grace_env else float(cls.model_fields["grace_seconds"].default)
        period = spec.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE)
        if not period > sleep + grace:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {period} is not above "
                f"preStop sleep {sleep:g} + STAGEFLOW_GRACE_SECONDS {grace:g}"
            )
    return problems


# -- namespace ----------------------------------------------------------------


def check_namespace(docs: list[Manifest], namespace: str = "stageflow") -> list[str]:
    """Everything lives in the stageflow namespace (an overlay's own objects
    too: only the kustomization that lists a file sets its namespace)."""
    return [
        f"{_name(doc)}: namespace {doc.get('metadata', {}).get('namespace')!r}, not {namespace!r}"
        for doc in docs
        if doc.get("kind") != "Namespace" and doc.get("metadata", {}).get("namespace") != namespace
    ]


# -- pipelines, autoscaling, network -------------------------------------------


def check_pipelines(docs: list[Manifest], pipelines_dir: Path = REPO / "pipelines") -> list[str]:
    """The pipeline ConfigMap holds exactly pipelines/*.yaml, byte for byte."""
    expected = {p.name: p.read_text() for p in sorted(pipelines_dir.glob("*.yaml"))}
    maps = [
        d
        for d in docs
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"].startswith("stageflow-pipelines")
    ]
    if len(maps) != 1:
        return [f"expected one stageflow-pipelines ConfigMap, found {len(maps)}"]
    data = maps[0].get("data") or {}
    problems = [
        f"{_name(maps[0])}: {name} differs from pipelines/{name} "
        "(copy pipelines/*.yaml to deploy/k8s/base/pipelines/ and list it)"
        for name in sorted(expected.keys() | data.keys())
        if data.get(name) != expected.get(name)
    ]
    return problems


def check_autoscaling(
    docs: list[Manifest], metric_names: set[str], adapter_metrics: set[str]
) -> list[str]:
    """Each stage has an HPA; each HPA scales on a per-pod stageflow metric
    (one the processes export and the adapter serves) with CPU as fallback."""
    problems = []
    hpas = {
        d["spec"]["scaleTargetRef"]["name"]: d
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    for component in STAGE_COMPONENTS:
        hpa = hpas.get(component)
        if hpa is None:
            problems.append(f"Deployment/{component}: no HorizontalPodAutoscaler")
            continue
        spec = hpa["spec"]
        if not 1 < spec.get("minReplicas", 1) <= spec["maxReplicas"]:
            problems.append(f"{_name(hpa)}: minReplicas must be 2..maxReplicas")
        pods = [m["pods"]["metric"]["name"] for m in spec.get("metrics", []) if m["type"] == "Pods"]
        cpu = [
            m
            for m in spec.get("metrics", [])
            if m["type"] == "Resource" and m["resource"]["name"] == "cpu"
        ]
        if not pods:
            problems.append(f"{_name(hpa)}: no Pods metric")
        if not cpu:
            problems.append(f"{_name(hpa)}: no CPU fallback metric")
        for name in pods:
            if name not in metric_names:
                problems.append(
                    f"{_name(hpa)}: {name} is not a metric stageflow.serving.metrics exports"
                )
            if name not in adapter_metrics:
                problems.append(f"{_name(hpa)}: the Prometheus adapter has no rule for {name}")
    return problems


def check_network(docs: list[Manifest]) -> list[str]:
    """Ingress is denied by default, and stage pods admit only the
    orchestrator and the load tester."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    problems = []
    if not any(
        p["spec"].get("podSelector") == {}
        and "Ingress" in p["spec"].get("policyTypes", [])
        and not p["spec"].get("ingress")
        for p in policies
    ):
        problems.append("no default-deny ingress NetworkPolicy")
    allowed = {"orchestrator", "loadtest"}
    for policy in policies:
        selector = policy["spec"].get("podSelector") or {}
        selected = set(
            [selector.get("matchLabels", {}).get(COMPONENT)]
            + [
                v
                for e in selector.get("matchExpressions", [])
                if e["key"] == COMPONENT and e["operator"] == "In"
                for v in e["values"]
            ]
        )
        if not selected & set(STAGE_COMPONENTS):
            continue
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or [{}]:
                source = (peer.get("podSelector") or {}).get("matchLabels", {}).get(COMPONENT)
                ports = {p.get("port") for p in rule.get("ports") or []}
                if source not in allowed and ports != {9090}:
                    problems.append(f"{_name(policy)}: stages admit {peer or 'everyone'}")
    # Only the gateway is reachable from outside the namespace (metrics
    # scraping from monitoring aside), and the orchestrator only from the
    # gateway and from pods labelled as its internal clients.
    for policy in policies:
        selector = policy["spec"].get("podSelector") or {}
        component = selector.get("matchLabels", {}).get(COMPONENT)
        for rule in policy["spec"].get("ingress") or []:
            ports = {p.get("port") for p in rule.get("ports") or []}
            peers = rule.get("from") or [{}]
            for peer in peers:
                outside = "namespaceSelector" in peer or not peer
                if outside and component != "gateway" and ports != {9090}:
                    problems.append(f"{_name(policy)}: admits {peer or 'everyone'} from outside")
                if component == "orchestrator" and ports != {9090}:
                    labels = (peer.get("podSelector") or {}).get("matchLabels", {})
                    if labels.get(COMPONENT) != "gateway" and labels != {
                        ORCHESTRATOR_CLIENT: "true"
                    }:
                        problems.append(f"{_name(policy)}: the orchestrator admits {peer}")
    return problems


# -- the orchestrator's availability --------------------------------------------

ORCHESTRATOR = "orchestrator"
HOSTNAME = "kubernetes.io/hostname"


def _selects(selector: Manifest, component: str) -> bool:
    return (selector.get("matchLabels") or {}).get(COMPONENT) == component


def check_orchestrator_replicated(docs: list[Manifest], min_replicas: int = 2) -> list[str]:
    """No single point of failure: the orchestrator Deployment runs at least
    `min_replicas` pods rolled one at a time (not Recreate), spread over nodes,
    kept by a PodDisruptionBudget, with no volume of its own (no PVC: the job
    store is PostgreSQL, its URL from a Secret, never a literal holding a
    password, and no SQLite path)."""
    problems = []
    deployments = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == ORCHESTRATOR
    ]
    if len(deployments) != 1:
        return [f"expected one orchestrator Deployment, found {len(deployments)}"]
    (doc,) = deployments
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    if spec.get("replicas", 1) < min_replicas:
        problems.append(
            f"{_name(doc)}: {spec.get('replicas', 1)} replicas, fewer than {min_replicas}"
        )
    if (spec.get("strategy") or {}).get("type") == "Recreate":
        problems.append(f"{_name(doc)}: strategy Recreate stops every replica at once")
    claims = [v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
    if claims:
        problems.append(f"{_name(doc)}: mounts PersistentVolumeClaim volumes {claims}")
    for pvc in docs:
        labels = pvc.get("metadata", {}).get("labels") or {}
        if pvc["kind"] == "PersistentVolumeClaim" and labels.get(COMPONENT) == ORCHESTRATOR:
            problems.append(f"{_name(pvc)}: the orchestrator keeps no volume")
    spread = pod.get("topologySpreadConstraints") or []
    if not any(
        c.get("topologyKey") == HOSTNAME and _selects(c.get("labelSelector") or {}, ORCHESTRATOR)
        for c in spread
    ):
        problems.append(f"{_name(doc)}: no topology spread over {HOSTNAME}")
    if not any(
        d["kind"] == "PodDisruptionBudget"
        and _selects(d["spec"].get("selector") or {}, ORCHESTRATOR)
        for d in docs
    ):
        problems.append(f"{_name(doc)}: no PodDisruptionBudget selects the orchestrator")
    for where, container, _ in containers(doc):
        env = {e["name"]: e for e in container.get("env", [])}
        url = env.get("STAGEFLOW_JOB_STORE_URL")
        if url is None or "secretKeyRef" not in (url.get("valueFrom") or {}):
            problems.append(f"{where}: STAGEFLOW_JOB_STORE_URL does not come from a Secret")
        if "STAGEFLOW_DB_PATH" in env:
            problems.append(f"{where}: STAGEFLOW_DB_PATH (SQLite) with several replicas")
    return problems


# -- the gateway's sign-in secret -----------------------------------------------

SESSION_SECRET_ENV = "STAGEFLOW_SESSION_SECRET_KEY"


def _secret_value(docs: list[Manifest], name: str, key: str) -> str | None:
    """The decoded `key` of the rendered Secret `name` (data or stringData);
    None when no such Secret is rendered (prod: it is created out of band)."""
    for doc in docs:
        if doc.get("kind") == "Secret" and doc.get("metadata", {}).get("name") == name:
            if key in (doc.get("stringData") or {}):
                return str(doc["stringData"][key])
            encoded = (doc.get("data") or {}).get(key)
            return "" if encoded is None else base64.b64decode(encoded).decode()
    return None


def check_gateway_sessions(docs: list[Manifest]) -> list[str]:
    """Every gateway container reads STAGEFLOW_SESSION_SECRET_KEY from a
    Secret (secretKeyRef), never a literal: without one shared secret each
    replica seals the workspace's sign-in cookies with its own random key, so
    a browser signed in on one pod is sent back to /signin by the next (and
    every restart signs everyone out). Any replica count: an HPA owns prod's.
    Where the overlay renders that Secret (dev), its key exists and holds a
    value GatewaySettings accepts (at least MIN_SECRET_CHARS characters)."""
    problems = []
    for where, container, _ in all_containers(docs):
        if _process(container)[0] != "gateway":
            continue
        var = {e["name"]: e for e in container.get("env") or []}.get(SESSION_SECRET_ENV)
        ref = ((var or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if var is None:
            problems.append(f"{where}: {SESSION_SECRET_ENV} is not set")
            continue
        if not ref.get("name") or not ref.get("key"):
            problems.append(f"{where}: {SESSION_SECRET_ENV} does not come from a Secret")
            continue
        value = _secret_value(docs, ref["name"], ref["key"])
        if value is None:
            continue
        if not value:
            problems.append(f"{where}: Secret/{ref['name']} has no {ref['key']!r} (or it is empty)")
            continue
        try:
            GatewaySettings.model_validate({"session_secret_key": value})
        except ValidationError as err:
            reason = "; ".join(e["msg"] for e in err.errors())
            problems.append(f"{where}: Secret/{ref['name']} key {ref['key']!r}: {reason}")
    return problems
