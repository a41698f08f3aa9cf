"""The gateway as a real uvicorn process in front of a real orchestrator with
authentication on (and real stages): the HTTP/JSON API over httpx, SSE with
resumption, artifacts in three formats, two tenants, missing and revoked keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from stageflow.client import ClientSettings, ResourceExhausted, StageflowClient
from stageflow.client.recipe import read_recipe
from tests.gateway_stack import Gateway, gateway_stack

WAIT = 300.0
JOB = {
    "bundle": {"base": "a red circle on a blue background", "style": "gateway test"},
    "seed": 7,
    "width": 32,
    "height": 32,
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fixture_models: Path) -> Iterator[Gateway]:
    with gateway_stack(tmp_path_factory.mktemp("gateway-cluster"), fixture_models) as gw:
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
        shown = got["versions"][version - 1]
        png = httpx.get(f"{url}/versions/{version}/image", headers=gateway.auth("acme"))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        # The ETag is that of the bytes sent: the stored PNG plus its recipe.
        assert png.headers["etag"] == f'"{hashlib.sha256(png.content).hexdigest()}"'
        assert hashlib.sha256(png.content).hexdigest() != shown["final"]["sha256"]
        with Image.open(io.BytesIO(png.content)) as image:
            image.load()  # text chunks after IDAT are read with the pixels
            parameters = image.info["parameters"]
            made = json.loads(image.info["stageflow"])
        base = shown["stages"][0]
        assert parameters.startswith(shown["prompt"] + "\n")
        assert f"Seed: {shown['seed']}," in parameters
        assert f"Model: {base['model']['name']}" in parameters
        assert f"Model hash: {base['model']['fingerprint'][:10]}" in parameters
        assert (made["job_id"], made["version"]) == (job["job_id"], version)
        assert made["pipeline"]["sha256"] == shown["pipeline_sha256"]
        assert [s["reused"] for s in made["stages"]] == (
            [False, False, False] if version == 1 else [True, True, False]
        )
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
    first = got["versions"][0]
    for data, stage in ((webp.content, "upscale"), (jpeg.content, "base")):
        # XMP (what photo tools show) and EXIF UserComment (what A1111 reads).
        parameters, made = read_recipe(data)
        assert parameters.startswith(first["prompt"] + "\n")
        assert f"Seed: {first['seed']}," in parameters
        assert made["image"]["stage"] == stage
        # The recipe records the identity that decides the pixels (recipe.py), a
        # subset of the job's model info (which also says why, e.g. dtype_reason).
        recorded = made["stages"][0]["model"]
        assert recorded == {k: first["stages"][0]["model"].get(k, "") for k in recorded}
        assert set(recorded) >= {"name", "version", "fingerprint", "dtype"}
        with Image.open(io.BytesIO(data)) as image:
            comment = image.getexif().get_ifd(0x8769)[0x9286]
        assert comment.startswith(b"UNICODE\x00")
        assert comment[8:].decode("utf-16-be") == parameters
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
    assert fetched.status_code == 200
    # Same seed, same pixels (each job's PNG carries its own job id in its recipe).
    with Image.open(io.BytesIO(fetched.content)) as a, Image.open(io.BytesIO(images[0])) as b:
        assert a.tobytes() == b.tobytes()


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


def _png(size: tuple[int, int] = (32, 32), color: tuple[int, ...] = (20, 90, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA" if len(color) == 4 else "RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _bomb_png() -> bytes:
    """A PNG under 100 bytes whose header claims 60000 x 60000 pixels."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 32


def _upload(gw: Gateway, data: bytes, tenant: str = "acme") -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/uploads",
        files={"file": ("in.png", data, "image/png")},
        headers=gw.auth(tenant),
        timeout=WAIT,
    )


def test_an_upload_is_a_jobs_input_and_only_its_tenants(gateway: Gateway) -> None:
    source = _png()
    reply = _upload(gateway, source)
    assert reply.status_code == 201, reply.text
    upload = reply.json()
    assert upload["id"] == f"{hashlib.sha256(source).hexdigest()}.png"
    assert (upload["width"], upload["height"], upload["format"]) == (32, 32, "png")

    bundle = {"base": "a red circle on a blue background"}
    job = _submit(gateway, bundle=bundle, input_image=upload["id"], width=0, height=0)
    stages = job["stages"]
    assert isinstance(stages, list)
    assert [s["stage"] for s in stages] == ["refine", "upscale"]  # base skipped
    _finish(gateway, str(job["job_id"]))
    got = httpx.get(f"{gateway.url}/v1/jobs/{job['job_id']}", headers=gateway.auth("acme"))
    done = got.json()["job"]
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert done["stages"][0]["request"]["image"]["sha256"] == hashlib.sha256(source).hexdigest()
    final = httpx.get(
        f"{gateway.url}/v1/jobs/{job['job_id']}/versions/1/image", headers=gateway.auth("acme")
    )
    with Image.open(io.BytesIO(final.content)) as image:
        assert image.size == (128, 128)  # the 32 px upload, refined, x4

    # Rerunning from the first stage reads the upload again.
    url = f"{gateway.url}/v1/jobs/{job['job_id']}"
    rerun = httpx.post(f"{url}/rerun", json={"from_stage": "refine"}, headers=gateway.auth("acme"))
    assert rerun.status_code == 201, rerun.text
    _finish(gateway, str(job["job_id"]))
    latest = httpx.get(url, headers=gateway.auth("acme")).json()["job"]
    assert latest["version"] == 2 and latest["state"] == "JOB_STATE_SUCCEEDED", latest

    other = httpx.post(
        f"{gateway.url}/v1/jobs",
        json={**JOB, "input_image": upload["id"], "width": 0, "height": 0},
        headers=gateway.auth("globex"),
    )
    assert other.status_code == 404 and other.json()["error"]["code"] == "NOT_FOUND"
    with_base = httpx.post(
        f"{gateway.url}/v1/jobs",
        json={**JOB, "input_image": upload["id"], "stages": ["base", "refine"]},
        headers=gateway.auth("acme"),
    )
    assert with_base.status_code == 400 and with_base.json()["error"]["field"] == "stages"


def test_uploads_are_checked_before_they_are_stored(gateway: Gateway) -> None:
    bomb = _upload(gateway, _bomb_png())
    assert bomb.status_code == 400, bomb.text
    assert bomb.json()["error"]["field"] == "file" and "pixels" in bomb.json()["error"]["message"]
    junk = _upload(gateway, b"GIF89a not really an image")
    assert junk.status_code == 400 and "PNG, JPEG or WebP" in junk.json()["error"]["message"]
    truncated = _upload(gateway, _png((32, 32))[:60])
    assert truncated.status_code == 400 and truncated.json()["error"]["field"] == "file"
    assert not list((gateway.cluster.state_dir).rglob("uploads/acme/**/*.gif"))
    anonymous = httpx.post(
        f"{gateway.url}/v1/uploads", files={"file": ("in.png", _png(), "image/png")}
    )
    assert anonymous.status_code == 401


def test_openai_client_edits_an_image(gateway: Gateway) -> None:
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.keys["acme"], max_retries=0
    )
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 16, 32, 32))  # repaint the bottom half
    mask_png = io.BytesIO()
    mask.save(mask_png, format="PNG")
    result = client.images.edit(
        image=("in.png", _png(), "image/png"),
        mask=("mask.png", mask_png.getvalue(), "image/png"),
        prompt="a red circle on a blue background",
        n=1,
        response_format="b64_json",
        extra_body={"seed": 5},
    )
    assert result.data is not None and len(result.data) == 1
    edited = base64.b64decode(result.data[0].b64_json or "")
    with Image.open(io.BytesIO(edited)) as image:
        assert image.size == (32, 32)  # the refine stage alone keeps the size
    jobs = httpx.get(f"{gateway.url}/v1/jobs", headers=gateway.auth("acme")).json()["jobs"]
    latest = jobs[0]
    assert [s["stage"] for s in latest["stages"]] == ["refine"]
    params = latest["stages"][0]["request"]["refine"]
    assert params["mode"] == "REFINE_MODE_INPAINT"
    # The mask's transparent half (proto3 JSON leaves out the 0.0 left).
    assert params["mask_box"] == {"top": 0.5, "right": 1.0, "bottom": 1.0}

    # No prompt and an upscaling pipeline: upscale only (OpenAI's client insists
    # on a prompt, so this one is plain multipart).
    reply = httpx.post(
        f"{gateway.url}/v1/images/edits",
        files={"image": ("in.png", _png(), "image/png")},
        data={"model": "default"},
        headers=gateway.auth("acme"),
        timeout=WAIT,
    )
    assert reply.status_code == 200, reply.text
    upscaled = base64.b64decode(reply.json()["data"][0]["b64_json"])
    with Image.open(io.BytesIO(upscaled)) as image:
        assert image.size == (128, 128)
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.edit(image=("in.gif", b"GIF89a...", "image/gif"), prompt="x")
    assert bad.value.param == "image" and bad.value.type == "invalid_request_error"


def test_share_links_open_without_a_key_and_fail_when_altered_or_expired(
    gateway: Gateway,
) -> None:
    job = _submit(gateway, seed=21)
    job_id = str(job["job_id"])
    _finish(gateway, job_id)
    url = f"{gateway.url}/v1/jobs/{job_id}/versions/1"
    final = httpx.get(f"{url}/image", headers=gateway.auth("acme")).content

    reply = httpx.post(f"{url}/share", json={"expires_in": 600}, headers=gateway.auth("acme"))
    assert reply.status_code == 201, reply.text
    link = reply.json()
    assert link["image_url"] == link["url"] + "/image" and link["version"] == 1
    image = httpx.get(link["image_url"])  # no key
    assert image.status_code == 200 and image.content == final
    page = httpx.get(link["url"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/image" in page.text and job_id in page.text

    # Any changed byte of the path, the expiry's included: 403.
    job_part, version, expires, signature = link["url"].split("/share/", 1)[1].split("/")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    forged = [
        f"{job_part}/{version}/{expires}/{flipped}",
        f"{job_part}/{version}/{int(expires) + 1}/{signature}",
        f"{job_part}/2/{expires}/{signature}",
    ]
    for path in forged:
        denied = httpx.get(f"{gateway.url}/share/{path}/image")
        assert denied.status_code == 403, (path, denied.text)
        assert denied.json()["error"]["code"] == "PERMISSION_DENIED"

    short = httpx.post(f"{url}/share", json={"expires_in": 1}, headers=gateway.auth("acme"))
    assert short.status_code == 201
    time.sleep(2.1)
    gone = httpx.get(short.json()["image_url"])
    assert gone.status_code == 410 and "expired" in gone.json()["error"]["message"]
    assert httpx.get(short.json()["url"]).status_code == 410

    too_long = httpx.post(f"{url}/share", json={"expires_in": 10**9}, headers=gateway.auth("acme"))
    assert too_long.status_code == 400
    assert too_long.json()["error"]["field"] == "expires_in_seconds"
    # Another tenant cannot share it: 404, as for an unknown job.
    other = httpx.post(f"{url}/share", json={}, headers=gateway.auth("globex"))
    assert other.status_code == 404 and other.json()["error"]["code"] == "NOT_FOUND"
    assert httpx.post(f"{url}/share", json={}).status_code == 401


def test_a_burst_over_the_rate_limit_gets_429_and_the_accepted_jobs_complete(
    gateway: Gateway,
) -> None:
    out = gateway.keys_cli(
        "create", "--tenant", "bursty", "--quota", "per_minute=3,queued=10", "--json"
    ).stdout
    key = json.loads(out)["key"]
    headers = {"Authorization": f"Bearer {key}"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=WAIT) as http:
            return await asyncio.gather(
                *(
                    http.post("/v1/jobs", json={**JOB, "seed": 100 + i}, headers=headers)
                    for i in range(6)
                )
            )

    replies = asyncio.run(burst())
    accepted = [r for r in replies if r.status_code == 201]
    refused = [r for r in replies if r.status_code == 429]
    assert len(accepted) == 3 and len(refused) == 3, [r.status_code for r in replies]
    for reply in refused:
        assert 1 <= int(reply.headers["retry-after"]) <= 60
        assert reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"

    # A gRPC caller with the same key: RESOURCE_EXHAUSTED with google.rpc.RetryInfo.
    async def grpc_submit() -> float | None:
        settings = ClientSettings(address=gateway.cluster.orchestrator_address, api_key=key)
        async with StageflowClient(settings=settings) as client:
            with pytest.raises(ResourceExhausted) as err:
                await client.submit(base="a circle", width=32, height=32)
            return err.value.retry_after

    retry_after = asyncio.run(grpc_submit())
    assert retry_after is not None and 0 < retry_after <= 60

    for reply in accepted:
        job_id = reply.json()["job"]["job_id"]
        with httpx.stream(
            "GET", f"{gateway.url}/v1/jobs/{job_id}/events", headers=headers, timeout=WAIT
        ) as response:
            frames = list(_events(response))
        assert frames[-1][1] == "finished"
        finished = frames[-1][2]["finished"]
        assert isinstance(finished, dict) and finished["state"] == "JOB_STATE_SUCCEEDED"


def test_a_bulk_keys_jobs_take_the_bulk_lane(gateway: Gateway) -> None:
    out = gateway.keys_cli("create", "--tenant", "acme", "--priority", "bulk", "--json").stdout
    created = json.loads(out)
    assert created["priority"] == "bulk"
    headers = {"Authorization": f"Bearer {created['key']}"}
    body = {**JOB, "seed": 31, "priority": "PRIORITY_INTERACTIVE"}
    reply = httpx.post(f"{gateway.url}/v1/jobs", json=body, headers=headers)
    assert reply.status_code == 201, reply.text
    assert reply.json()["job"]["request"]["priority"] == "PRIORITY_BULK"
    interactive = httpx.post(
        f"{gateway.url}/v1/jobs", json={**body, "seed": 32}, headers=gateway.auth("acme")
    )
    assert interactive.json()["job"]["request"]["priority"] == "PRIORITY_INTERACTIVE"


# A fixed, small budget per operation: the whole sweep stays well under a minute.
SCHEMATHESIS_EXAMPLES = 30


def test_schemathesis_finds_no_5xx(gateway: Gateway) -> None:
    """Every operation of /openapi.json, fed schemathesis' generated requests
    (valid and invalid, with a valid key): no answer is a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    headers = gateway.auth("acme")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=SCHEMATHESIS_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same requests on every run
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            response = case.call(headers=headers, timeout=WAIT)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:200]}"
                )

        call()
    assert operations >= 12  # the jobs, images, uploads, share and OpenAI routes
    assert failures == [], "\n".join(failures)
