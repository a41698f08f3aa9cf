"""Each policy check reports a deliberately broken manifest (and passes a good
one), so the checks over the real manifests can fail."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest

from stageflow.serving.settings import StageSettings
from tests.deploy import policies
from tests.deploy.render import Manifest

SECRET = {"secretKeyRef": {"name": "stageflow-s3", "key": "secret-key"}}


def stage_deployment(name: str = "base") -> Manifest:
    """A prod-like stage Deployment that every check accepts."""
    labels = {"app.kubernetes.io/name": "stageflow", "app.kubernetes.io/component": f"stage-{name}"}
    probe = {"grpc": {"port": 50051}}
    container = {
        "name": "stage",
        "image": "stageflow/stage-cuda:0.1.0",
        "command": ["python", "-m", f"stageflow.services.{name}"],
        "env": [
            {"name": "STAGEFLOW_PORT", "value": "50051"},
            {"name": "STAGEFLOW_GRACE_SECONDS", "value": "60"},
            {"name": "STAGEFLOW_MODEL_REPOSITORY", "value": "s3://m/r?endpoint=http://minio:9000"},
            {"name": "STAGEFLOW_MODEL", "value": "sd15@1"},
            {"name": "STAGEFLOW_S3_SECRET_KEY", "valueFrom": SECRET},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
            "limits": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"},
        },
        "startupProbe": probe,
        "readinessProbe": probe,
        "livenessProbe": probe,
        "lifecycle": {
            "preStop": {"exec": {"command": ["/bin/sh", "-c", "kill -USR1 1 && sleep 10"]}}
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"stage-{name}", "namespace": "stageflow"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 90,
                    "nodeSelector": {"stageflow.io/gpu-pool": name},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    }


def stage(doc: Manifest) -> Any:
    return doc["spec"]["template"]["spec"]["containers"][0]


def service(selector: dict[str, str]) -> Manifest:
    return {
        "kind": "Service",
        "metadata": {"name": "stage-base", "namespace": "stageflow"},
        "spec": {"selector": selector},
    }


def env(doc: Manifest, name: str, value: str) -> Manifest:
    stage(doc)["env"].append({"name": name, "value": value})
    return doc


def test_the_good_stage_passes_every_check() -> None:
    docs = [stage_deployment(s) for s in ("base", "refine", "upscale")]
    for check in (
        policies.check_resources,
        policies.check_probes,
        policies.check_security,
        policies.check_gpu_stages,
        policies.check_selectors,
        policies.check_env,
        policies.check_shutdown,
        policies.check_namespace,
    ):
        assert check(docs) == [], check.__name__


def test_resources_flags_a_missing_limit_in_an_init_container() -> None:
    doc = stage_deployment()
    init = copy.deepcopy(stage(doc))
    init["name"] = "wait"
    del init["resources"]["limits"]["memory"]
    doc["spec"]["template"]["spec"]["initContainers"] = [init]
    assert policies.check_resources([doc]) == [
        "Deployment/stage-base initContainer wait: no limits for memory"
    ]


def test_resources_flag_a_job_without_requests() -> None:
    job = stage_deployment()
    job["kind"] = "Job"
    del stage(job)["resources"]["requests"]
    assert policies.check_resources([job]) == [
        "Deployment/stage-base container stage: no requests for cpu, memory".replace(
            "Deployment", "Job"
        )
    ]


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe", "startupProbe"])
def test_probes_flag_a_missing_probe(probe: str) -> None:
    doc = stage_deployment()
    del stage(doc)[probe]
    assert policies.check_probes([doc]) == [f"Deployment/stage-base container stage: no {probe}"]


def test_probes_want_grpc_on_stage_containers() -> None:
    doc = stage_deployment()
    stage(doc)["livenessProbe"] = {"tcpSocket": {"port": 50051}}
    assert policies.check_probes([doc]) == [
        "Deployment/stage-base container stage: livenessProbe is not a gRPC probe on 50051"
    ]


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("pod", "runAsNonRoot", False, "runAsNonRoot is not true"),
        ("pod", "runAsUser", 0, "runAsUser is 0, not 10001"),
        ("pod", "seccompProfile", {"type": "Unconfined"}, "seccompProfile is not RuntimeDefault"),
        ("container", "allowPrivilegeEscalation", True, "allowPrivilegeEscalation is not false"),
        ("container", "readOnlyRootFilesystem", False, "readOnlyRootFilesystem is not true"),
        ("container", "capabilities", {"drop": ["NET_RAW"]}, "capabilities do not drop ALL"),
        ("container", "runAsNonRoot", False, "runAsNonRoot is not true"),
    ],
)
def test_security_flags_each_weakening(where: str, key: str, value: Any, message: str) -> None:
    doc = stage_deployment()
    target = stage(doc) if where == "container" else doc["spec"]["template"]["spec"]
    target["securityContext"][key] = value
    assert policies.check_security([doc]) == [f"Deployment/stage-base container stage: {message}"]


def test_gpu_stages_flag_each_missing_piece() -> None:
    doc = stage_deployment()
    spec = doc["spec"]["template"]["spec"]
    del spec["nodeSelector"], spec["tolerations"]
    del stage(doc)["resources"]["limits"]["nvidia.com/gpu"]
    assert policies.check_gpu_stages([doc]) == [
        "Deployment/stage-base: no stageflow.io/gpu-pool nodeSelector or required affinity",
        "Deployment/stage-base: no toleration for the nvidia.com/gpu NoSchedule taint",
        "Deployment/stage-base container stage: no nvidia.com/gpu limit",
    ]


def test_gpu_stages_accept_required_affinity_and_flag_a_shared_pool() -> None:
    base, refine = stage_deployment("base"), stage_deployment("refine")
    spec = base["spec"]["template"]["spec"]
    del spec["nodeSelector"]
    term = {"matchExpressions": [{"key": "stageflow.io/gpu-pool", "operator": "In"}]}
    spec["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }
    assert policies.check_gpu_stages([base]) == []
    refine["spec"]["template"]["spec"]["nodeSelector"] = {"stageflow.io/gpu-pool": "upscale"}
    upscale = stage_deployment("upscale")
    assert policies.check_gpu_stages([refine, upscale]) == [
        "Deployment/stage-upscale: shares GPU pool 'upscale' with Deployment/stage-refine"
    ]


def test_selectors_flag_a_service_matching_no_pods() -> None:
    doc = stage_deployment()
    good = service({"app.kubernetes.io/component": "stage-base"})
    typo = service({"app.kubernetes.io/component": "stage-bsae"})
    assert policies.check_selectors([doc, good]) == []
    assert policies.check_selectors([doc, typo]) == [
        "Service/stage-base: selector {'app.kubernetes.io/component': 'stage-bsae'} "
        "matches no workload's pods"
    ]


def test_selectors_flag_an_hpa_without_its_deployment() -> None:
    hpa = {
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "stage-x"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "stage-x"}},
    }
    assert policies.check_selectors([stage_deployment(), hpa]) == [
        "HorizontalPodAutoscaler/stage-x: scales Deployment/stage-x, not rendered"
    ]


def test_env_flags_a_name_the_stage_does_not_read() -> None:
    doc = env(stage_deployment(), "STAGEFLOW_MODLE", "sd15@1")
    assert policies.check_env([doc]) == [
        "Deployment/stage-base container stage: STAGEFLOW_MODLE is not a field of StageSettings"
    ]


def test_env_flags_an_orchestrator_setting_on_a_stage() -> None:
    doc = env(stage_deployment(), "STAGEFLOW_DB_PATH", "/x")
    assert policies.check_env([doc]) == [
        "Deployment/stage-base container stage: STAGEFLOW_DB_PATH is not a field of StageSettings"
    ]


def test_env_flags_a_value_the_settings_reject() -> None:
    doc = env(stage_deployment(), "STAGEFLOW_MAX_CONCURRENCY", "0")
    problems = policies.check_env([doc])
    assert len(problems) == 1
    assert "STAGEFLOW_MAX_CONCURRENCY" in problems[0]


def test_env_flags_a_model_without_a_repository() -> None:
    doc = stage_deployment()
    stage(doc)["env"] = [e for e in stage(doc)["env"] if e["name"] != "STAGEFLOW_MODEL_REPOSITORY"]
    problems = policies.check_env([doc])
    assert len(problems) == 1
    assert "model_repository" in problems[0]


def test_env_flags_a_required_field_without_a_default() -> None:
    # What the stage's own defaults (services/base/__main__.py) supply...
    assert set(policies.service_defaults("stageflow.services.base")) >= {
        "model_family",
        "model_path",
    }
    assert policies.check_env([stage_deployment()]) == []
    # ...is a required setting a container must set when a process gives none.
    assert policies.check_settings("stage", {}, StageSettings, {}) == [
        "stage: required STAGEFLOW_MODEL_FAMILY is not set",
        "stage: required STAGEFLOW_MODEL_PATH is not set",
    ]


def test_env_checks_cli_containers_against_what_the_cli_reads() -> None:
    job = stage_deployment()
    job["kind"] = "Job"
    stage(job)["command"] = ["/bin/sh", "-c"]
    stage(job)["args"] = ["set -eu\nstageflow models list --json\n"]
    stage(job)["env"] = [
        {"name": "STAGEFLOW_MODEL_REPOSITORY", "value": "s3://m/r"},
        {"name": "STAGEFLOW_MODEL", "value": "sd15@1"},  # a stage setting the CLI ignores
    ]
    assert policies.check_env([job]) == [
        "Job/stage-base container stage: STAGEFLOW_MODEL is read by nothing this container runs"
    ]


def test_env_flags_stageflow_vars_on_other_images() -> None:
    doc = stage_deployment()
    stage(doc)["command"] = ["minio", "server", "/data"]
    problems = policies.check_env([doc])
    assert "STAGEFLOW_PORT is read by nothing this container runs" in problems[0]


def test_shutdown_flags_a_grace_period_shorter_than_drain() -> None:
    doc = stage_deployment()
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 70
    assert policies.check_shutdown([doc]) == [
        "Deployment/stage-base container stage: terminationGracePeriodSeconds 70 is not "
        "above preStop sleep 10 + STAGEFLOW_GRACE_SECONDS 60"
    ]


def test_shutdown_uses_the_settings_default_grace_and_kubernetes_default_period() -> None:
    doc = stage_deployment()
    del doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    stage(doc)["env"] = [e for e in stage(doc)["env"] if e["name"] != "STAGEFLOW_GRACE_SECONDS"]
    assert policies.check_shutdown([doc]) == []  # 30 > 10 + 10 (the settings default)
    stage(doc)["lifecycle"]["preStop"]["exec"]["command"][2] = "kill -USR1 1 && sleep 20"
    assert len(policies.check_shutdown([doc])) == 1


def test_shutdown_flags_a_prestop_that_does_not_flip_health() -> None:
    doc = stage_deployment()
    stage(doc)["lifecycle"]["preStop"]["exec"]["command"] = ["/bin/sh", "-c", "sleep 10"]
    assert policies.check_shutdown([doc]) == [
        "Deployment/stage-base container stage: preStop does not `kill -USR1 1 && sleep N`"
    ]


def test_pipelines_flag_a_drifted_or_missing_spec(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text("name: default\n")
    (tmp_path / "other.yaml").write_text("name: other\n")
    config = {
        "kind": "ConfigMap",
        "metadata": {"name": "stageflow-pipelines-abc"},
        "data": {"default.yaml": "name: default\n", "other.yaml": "name: other\n"},
    }
    assert policies.check_pipelines([config], tmp_path) == []
    config["data"] = {"default.yaml": "name: old\n"}
    assert [p.split(":")[1].split()[0] for p in policies.check_pipelines([config], tmp_path)] == [
        "default.yaml",
        "other.yaml",
    ]
    assert policies.check_pipelines([], tmp_path) == [
        "expected one stageflow-pipelines ConfigMap, found 0"
    ]


def _hpa(name: str, metric: str, cpu: bool = True, low: int = 2) -> Manifest:
    metrics: list[dict[str, Any]] = [{"type": "Pods", "pods": {"metric": {"name": metric}}}]
    if cpu:
        metrics.append({"type": "Resource", "resource": {"name": "cpu"}})
    return {
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": 8,
            "metrics": metrics,
        },
    }


def test_autoscaling_flags_unserved_metrics_and_missing_fallback() -> None:
    known = {"stageflow_stage_queue_depth"}
    good = [
        _hpa(f"stage-{s}", "stageflow_stage_queue_depth") for s in ("base", "refine", "upscale")
    ]
    assert policies.check_autoscaling(good, known, known) == []
    bad = [
        _hpa("stage-base", "stageflow_queue", cpu=False),
        _hpa("stage-refine", "stageflow_stage_queue_depth", low=1),
    ]
    assert policies.check_autoscaling(bad, known, known) == [
        "HorizontalPodAutoscaler/stage-base: no CPU fallback metric",
        "HorizontalPodAutoscaler/stage-base: stageflow_queue is not a metric "
        "stageflow.serving.metrics exports",
        "HorizontalPodAutoscaler/stage-base: the Prometheus adapter has no rule for "
        "stageflow_queue",
        "HorizontalPodAutoscaler/stage-refine: minReplicas must be 2..maxReplicas",
        "Deployment/stage-upscale: no HorizontalPodAutoscaler",
    ]


def _policy(name: str, selector: dict[str, Any], ingress: list[Any] | None) -> Manifest:
    spec: dict[str, Any] = {"podSelector": selector, "policyTypes": ["Ingress"]}
    if ingress is not None:
        spec["ingress"] = ingress
    return {"kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec}


def test_network_flags_open_stages_and_a_missing_default_deny() -> None:
    deny = _policy("deny", {}, None)
    stages = {"matchLabels": {"app.kubernetes.io/component": "stage-base"}}
    from_orchestrator = [
        {
            "from": [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "orchestrator"}}}
            ]
        }
    ]
    good = _policy("stages", stages, from_orchestrator)
    assert policies.check_network([deny, good]) == []
    assert policies.check_network([good]) == ["no default-deny ingress NetworkPolicy"]
    wide = _policy("wide", stages, [{"ports": [{"port": 50051}]}])
    assert policies.check_network([deny, wide]) == [
        "NetworkPolicy/wide: stages admit everyone",
        "NetworkPolicy/wide: admits everyone from outside",
    ]


def test_network_lets_only_the_gateway_in_from_outside() -> None:
    deny = _policy("deny", {}, None)
    orchestrator = {"matchLabels": {"app.kubernetes.io/component": "orchestrator"}}
    gateway = {"matchLabels": {"app.kubernetes.io/component": "gateway"}}
    door = _policy("door", gateway, [{"ports": [{"port": 8080}]}])
    clients = _policy(
        "clients",
        orchestrator,
        [
            {
                "from": [
                    {"podSelector": gateway},
                    {"podSelector": {"matchLabels": {"stageflow.io/orchestrator-client": "true"}}},
                ]
            }
        ],
    )
    assert policies.check_network([deny, door, clients]) == []
    other_ns = {"namespaceSelector": {"matchLabels": {"stageflow.io/client": "true"}}}
    leaky = _policy("leaky", orchestrator, [{"from": [other_ns]}])
    assert policies.check_network([deny, leaky]) == [
        f"NetworkPolicy/leaky: admits {other_ns} from outside",
        f"NetworkPolicy/leaky: the orchestrator admits {other_ns}",
    ]
    any_pod = {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "stageflow"}}}
    broad = _policy("broad", orchestrator, [{"from": [any_pod]}])
    assert policies.check_network([deny, broad]) == [
        f"NetworkPolicy/broad: the orchestrator admits {any_pod}"
    ]


def test_namespace_flags_an_object_outside_stageflow() -> None:
    doc = stage_deployment()
    del doc["metadata"]["namespace"]
    assert policies.check_namespace([doc]) == [
        "Deployment/stage-base: namespace None, not 'stageflow'"
    ]


def orchestrator_manifests() -> list[Manifest]:
    """A prod-like replicated orchestrator that check_orchestrator_replicated accepts."""
    labels = {"app.kubernetes.io/name": "stageflow", "app.kubernetes.io/component": "orchestrator"}
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "orchestrator", "labels": labels},
        "spec": {
            "replicas": 2,
            "strategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": labels},
                        }
                    ],
                    "containers": [
                        {
                            "name": "orchestrator",
                            "env": [
                                {
                                    "name": "STAGEFLOW_JOB_STORE_URL",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "stageflow-db-app", "key": "uri"}
                                    },
                                }
                            ],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    pdb = {
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "orchestrator"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    }
    return [deployment, pdb]


def test_orchestrator_replicated_accepts_the_good_one() -> None:
    assert policies.check_orchestrator_replicated(orchestrator_manifests()) == []


def _break(path: str, value: Any) -> list[Manifest]:
    docs = orchestrator_manifests()
    *keys, last = path.split(".")
    node: Any = docs[0]
    for key in keys:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return docs


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.replicas", 1, "1 replicas, fewer than 2"),
        ("spec.strategy", {"type": "Recreate"}, "strategy Recreate"),
        (
            "spec.template.spec.volumes",
            [{"name": "data", "persistentVolumeClaim": {"claimName": "orchestrator-data"}}],
            "mounts PersistentVolumeClaim volumes ['data']",
        ),
        ("spec.template.spec.topologySpreadConstraints", None, "no topology spread"),
        (
            "spec.template.spec.containers.0.env",
            [{"name": "STAGEFLOW_JOB_STORE_URL", "value": "postgresql://u:pw@db/stageflow"}],
            "STAGEFLOW_JOB_STORE_URL does not come from a Secret",
        ),
    ],
)
def test_orchestrator_replicated_flags_each_single_point(
    path: str, value: Any, message: str
) -> None:
    problems = policies.check_orchestrator_replicated(_break(path, value))
    assert len(problems) == 1 and message in problems[0], problems


def test_orchestrator_replicated_flags_a_missing_pdb_a_pvc_and_a_sqlite_path() -> None:
    deployment, _ = orchestrator_manifests()
    pvc = {
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "orchestrator-data", "labels": deployment["metadata"]["labels"]},
    }
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    env.append({"name": "STAGEFLOW_DB_PATH", "value": "/var/lib/stageflow/o.sqlite"})
    problems = policies.check_orchestrator_replicated([deployment, pvc])
    assert any("no PodDisruptionBudget" in p for p in problems), problems
    assert any("PersistentVolumeClaim/orchestrator-data" in p for p in problems), problems
    assert any("STAGEFLOW_DB_PATH" in p for p in problems), problems


def gateway_manifests(secret_value: str | None = None) -> list[Manifest]:
    """A gateway Deployment reading its session secret from a Secret, and that
    Secret when `secret_value` is given (as overlays/dev renders it)."""
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "gateway"},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "gateway",
                            "command": ["python", "-m", "stageflow.gateway"],
                            "env": [
                                {
                                    "name": "STAGEFLOW_SESSION_SECRET_KEY",
                                    "valueFrom": {
                                        "secretKeyRef": {
                                            "name": "stageflow-gateway-session",
                                            "key": "secret-key",
                                        }
                                    },
                                }
                            ],
                        }
                    ]
                }
            },
        },
    }
    if secret_value is None:
        return [deployment]
    secret = {
        "kind": "Secret",
        "metadata": {"name": "stageflow-gateway-session"},
        "data": {"secret-key": base64.b64encode(secret_value.encode()).decode()},
    }
    return [deployment, secret]


def _gateway_env(docs: list[Manifest]) -> list[Manifest]:
    env: list[Manifest] = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


@pytest.mark.parametrize("secret", [None, "x" * 32, "a-dev-only-session-secret-0123456789"])
def test_gateway_sessions_accept_a_secret_key_ref(secret: str | None) -> None:
    assert policies.check_gateway_sessions(gateway_manifests(secret)) == []


def test_gateway_sessions_flag_a_gateway_without_the_secret() -> None:
    docs = gateway_manifests()
    _gateway_env(docs).clear()
    assert policies.check_gateway_sessions(docs) == [
        "Deployment/gateway container gateway: STAGEFLOW_SESSION_SECRET_KEY is not set"
    ]


def test_gateway_sessions_flag_a_literal_value() -> None:
    docs = gateway_manifests()
    _gateway_env(docs)[0] = {"name": "STAGEFLOW_SESSION_SECRET_KEY", "value": "y" * 64}
    assert policies.check_gateway_sessions(docs) == [
        "Deployment/gateway container gateway: STAGEFLOW_SESSION_SECRET_KEY "
        "does not come from a Secret"
    ]


def test_gateway_sessions_flag_a_rendered_secret_the_settings_refuse() -> None:
    (problem,) = policies.check_gateway_sessions(gateway_manifests("too-short"))
    assert "Secret/stageflow-gateway-session key 'secret-key'" in problem
    assert "at least 32 characters" in problem
    deployment, secret = gateway_manifests("z" * 40)
    secret["data"] = {"other-key": secret["data"]["secret-key"]}
    assert policies.check_gateway_sessions([deployment, secret]) == [
        "Deployment/gateway container gateway: Secret/stageflow-gateway-session "
        "has no 'secret-key' (or it is empty)"
    ]


def test_gateway_sessions_ignore_other_containers() -> None:
    docs = gateway_manifests()
    _gateway_env(docs).clear()
    docs[0]["spec"]["template"]["spec"]["containers"][0]["command"] = ["python", "-m", "x"]
    assert policies.check_gateway_sessions(docs) == []
