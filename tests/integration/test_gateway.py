"""The gateway as a real uvicorn process in front of a real orchestrator with
authentication on (and real stages): the HTTP/JSON API over httpx, SSE with
resumption, artifacts in three formats, two tenants, missing and revoked keys."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from stageflow.cli.cluster import LocalCluster

SECRET = "gateway-test-secret-0123456789abcdef"
WAIT = 300.0
JOB = {
    "bundle": {"base": "a red circle on a blue background", "style": "gateway test"},
    "seed": 7,
    "width": 32,
    "height": 32,
}


@dataclass
class Gateway:
    cluster: LocalCluster
    url: str
    keys: dict[str, str]  # tenant -> key

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def keys_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        db = self.cluster.state_dir / "orchestrator.sqlite"
        return subprocess.run(
            [sys.executable, "-m", "stageflow.cli", "keys", *args, "--db-path", str(db)],
            env={**os.environ, "STAGEFLOW_AUTH_SECRET_KEY": SECRET},
            capture_output=True,
            text=True,
            check=True,
        )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fixture_models: Path) -> Iterator[Gateway]:
    with LocalCluster(
        state_dir=tmp_path_factory.mktemp("gateway-cluster"),
        models_dir=fixture_models,
        torch_threads=1,
        orchestrator_args=["--auth", "true"],
        extra_env={"STAGEFLOW_AUTH_SECRET_KEY": SECRET},
        gateway_port=0,
    ) as cluster:
        gw = Gateway(cluster, cluster.gateway_url, {})
        for tenant in ("acme", "globex"):
            out = gw.keys_cli("create", "--tenant", tenant, "--json").stdout
            gw.keys[tenant] = json.loads(out)["key"]
        yield gw


def _events(response: httpx.Response) -> Iterator[tuple[str | None, str, dict[str, object]]]:
    """(id, event, data) of each SSE frame."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "event" in fields:
            yield fields.get("id"), fields["event"], json.loads(fields["data"])
        fields = {}


def _finish(gw: Gateway, job_id: str, tenant: str = "acme") -> list[tuple[str | None, str]]:
    with httpx.stream(
        "GET", f"{gw.url}/v1/jobs/{job_id}/events", headers=gw.auth(tenant), timeout=WAIT
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [(i, e) for i, e, _ in _events(response)]
    assert frames[-1][1] == "finished"
    return frames


def _submit(gw: Gateway, tenant: str = "acme", **extra: object) -> dict[str, object]:
    reply = httpx.post(f"{gw.url}/v1/jobs", json={**JOB, **extra}, headers=gw.auth(tenant))
    assert reply.status_code == 201, reply.text
    job: dict[str, object] = reply.json()["job"]
    assert job["state"] == "JOB_STATE_QUEUED" and job["tenant"] == tenant
    return job


def test_probes_and_openapi(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    assert "/v1/jobs/{job_id}/events" in spec["paths"]
    assert "/v1/jobs/{job_id}/versions/{version}/image" in spec["paths"]


def test_submit_stream_get_rerun_and_images(gateway: Gateway) -> None:
    job = _submit(gateway)
    frames = _finish(gateway, str(job["job_id"]))
    kinds = [kind for _, kind in frames]
    assert kinds[0] == "snapshot" and kinds.count("stage_finished") == 3
    assert kinds.count("stage_started") == 3
    ids = [i for i, _ in frames if i is not None]
    assert len(ids) == len(set(ids)) == len(frames) - 1  # every event but the snapshot has an id

    url = f"{gateway.url}/v1/jobs/{job['job_id']}"
    got = httpx.get(url, headers=gateway.auth("acme")).json()
    assert got["job"]["state"] == "JOB_STATE_SUCCEEDED" and len(got["versions"]) == 1
    rerun = httpx.post(
        f"{url}/rerun",
        json={"from_stage": "upscale", "upscale": {"mode": "UPSCALE_MODE_LANCZOS"}},
        headers=gateway.auth("acme"),
    )
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["job"]["version"] == 2
    _finish(gateway, str(job["job_id"]))
    got = httpx.get(url, headers=gateway.auth("acme")).json()
    assert [v["version"] for v in got["versions"]] == [1, 2]

    for version in (1, 2):
        final = got["versions"][version - 1]["final"]
        png = httpx.get(f"{url}/versions/{version}/image", headers=gateway.auth("acme"))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        # The ETag is the sha256 the orchestrator recorded for the artifact.
        assert png.headers["etag"] == f'"{final["sha256"]}"'
        assert hashlib.sha256(png.content).hexdigest() == final["sha256"]
        assert "immutable" in png.headers["cache-control"]
        again = httpx.get(
            f"{url}/versions/{version}/image",
            headers={**gateway.auth("acme"), "If-None-Match": png.headers["etag"]},
        )
        assert again.status_code == 304
    webp = httpx.get(
        f"{url}/versions/1/image", headers={**gateway.auth("acme"), "Accept": "image/webp"}
    )
    assert webp.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(webp.content)).format == "WEBP"
    jpeg = httpx.get(
        f"{url}/versions/1/stages/base/image?format=jpeg", headers=gateway.auth("acme")
    )
    assert jpeg.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(jpeg.content)) as image:
        assert image.format == "JPEG" and image.size == (32, 32)  # the base stage's size
    bad = httpx.get(f"{url}/versions/1/image?format=gif", headers=gateway.auth("acme"))
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "format"


def test_events_resume_with_last_event_id_lose_and_repeat_nothing(gateway: Gateway) -> None:
    job = _submit(gateway, seed=8)
    url = f"{gateway.url}/v1/jobs/{job['job_id']}/events"
    first: list[tuple[str | None, str]] = []
    with httpx.stream("GET", url, headers=gateway.auth("acme"), timeout=WAIT) as response:
        for event_id, kind, _ in _events(response):
            first.append((event_id, kind))
            if kind == "stage_started":
                break  # drop the connection mid-job
    last = first[-1][0]
    assert last is not None
    headers = {**gateway.auth("acme"), "Last-Event-ID": last}
    with httpx.stream("GET", url, headers=headers, timeout=WAIT) as response:
        second = [(i, e) for i, e, _ in _events(response)]
    assert second and second[0][1] != "snapshot" and second[-1][1] == "finished"
    seen = [i for i, _ in first + second if i is not None]
    assert len(seen) == len(set(seen))  # nothing twice
    fresh = _finish(gateway, str(job["job_id"]))  # the whole history, derived afresh
    milestones = {(i, e) for i, e in fresh if e in ("stage_started", "stage_finished", "finished")}
    assert milestones <= set(first + second)  # nothing lost


def test_another_tenants_job_is_404_everywhere(gateway: Gateway) -> None:
    job = _submit(gateway, seed=9)
    job_id = str(job["job_id"])
    _finish(gateway, job_id)
    other = gateway.auth("globex")
    url = f"{gateway.url}/v1/jobs/{job_id}"
    attempts = [
        httpx.get(url, headers=other),
        httpx.post(f"{url}/cancel", headers=other),
        httpx.post(f"{url}/rerun", json={"from_stage": "upscale"}, headers=other),
        httpx.get(f"{url}/events", headers=other),
        httpx.get(f"{url}/versions/1/image", headers=other),
        httpx.get(f"{url}/versions/1/stages/base/image", headers=other),
    ]
    unknown = httpx.get(f"{gateway.url}/v1/jobs/job-0000000000000000", headers=other).json()
    for reply in attempts:
        assert reply.status_code == 404, (reply.request.url, reply.text)
        body = reply.json()["error"]
        assert body["code"] == "NOT_FOUND" == unknown["error"]["code"]
        assert (
            body["message"].replace(job_id, "job-0000000000000000") == unknown["error"]["message"]
        )
    listed = httpx.get(f"{gateway.url}/v1/jobs", headers=other).json()["jobs"]
    assert job_id not in {j["job_id"] for j in listed}
    mine = httpx.get(f"{gateway.url}/v1/jobs", headers=gateway.auth("acme")).json()["jobs"]
    assert job_id in {j["job_id"] for j in mine} and {j["tenant"] for j in mine} == {"acme"}


def test_missing_wrong_and_revoked_keys_are_401(gateway: Gateway) -> None:
    jobs = f"{gateway.url}/v1/jobs"
    missing = httpx.get(jobs)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "UNAUTHENTICATED"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(jobs, headers={"Authorization": "Bearer sf_nope"}).status_code == 401
    out = gateway.keys_cli("create", "--tenant", "initech", "--json").stdout
    created = json.loads(out)
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert httpx.get(jobs, headers=headers).status_code == 200
    gateway.keys_cli("revoke", created["key_id"])
    assert httpx.get(jobs, headers=headers).status_code == 401  # at once


def test_bad_input_names_the_field(gateway: Gateway) -> None:
    headers = gateway.auth("acme")
    reply = httpx.post(f"{gateway.url}/v1/jobs", json={**JOB, "width": 7}, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "width"
    reply = httpx.post(f"{gateway.url}/v1/jobs", json={**JOB, "colour": 1}, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "colour"
    reply = httpx.post(f"{gateway.url}/v1/jobs", json={**JOB, "seed": "x"}, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "seed"
    reply = httpx.get(f"{gateway.url}/v1/jobs?state=done", headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "state"


def test_openai_client_generates_images_and_lists_models(gateway: Gateway) -> None:
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.keys["acme"], max_retries=0
    )
    models = {m.id for m in client.models.list()}
    assert {"default", "text-after-upscale"} <= models
    result = client.images.generate(
        model="default",
        prompt="a red circle on a blue background",
        n=2,
        size="32x32",  # OpenAI's own sizes are larger: any WxH passes
        response_format="b64_json",
        extra_body={"seed": 11, "style": "openai test"},
    )
    assert result.data is not None and len(result.data) == 2
    images = [base64.b64decode(d.b64_json or "") for d in result.data]
    for png in images:
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size == (128, 128)  # 32 px base, x4 upscale
    assert images[0] != images[1]  # seeds 11 and 12

    by_url = client.images.generate(
        prompt="a red circle on a blue background",
        size="32x32",
        response_format="url",
        extra_body={"seed": 11, "style": "openai test"},
    )
    assert by_url.data is not None and by_url.data[0].url
    fetched = httpx.get(by_url.data[0].url, headers=gateway.auth("acme"))
    assert fetched.status_code == 200 and fetched.content == images[0]  # same seed, same image


def test_openai_errors_come_in_openai_shapes(gateway: Gateway) -> None:
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.keys["acme"], max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="a circle", n=5, size="32x32")
    assert bad.value.param == "n" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="a circle", size="big")
    assert bad.value.param == "size"
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="a circle", model="nope", size="32x32")
    assert bad.value.param == "pipeline" and "unknown pipeline" in bad.value.message
    anonymous = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sf_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        anonymous.models.list()
    assert denied.value.code == "unauthenticated"
