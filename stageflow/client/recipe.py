"""How an exported image was made, written into the image itself.

Two forms, both from the job version that made it:

- `parameters_text`: the Automatic1111 "parameters" text (prompt line,
  ``Negative prompt:`` line, then ``Steps: N, Sampler: X, CFG scale: C,
  Seed: S, Size: WxH, Model hash: H, Model: NAME`` and extras in the same
  ``Key: value`` style), which A1111, ComfyUI, InvokeAI and image sites read;
- `recipe`: stageflow's own JSON (pipeline name and sha256, every stage's
  model identity and exact parameters, job id and version, which stages were
  reused from the previous version or came from the stage cache).

`with_recipe` embeds both at export (PNG: tEXt ``parameters`` + iTXt
``stageflow``; JPEG/WebP: XMP), in pure Python: the stored artifacts and the
stage cache never change, only the bytes handed out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from stageflow.client.errors import NotFound
from stageflow.core import image_meta
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2

RECIPE_FORMAT = "stageflow.recipe/1"
PARAMETERS_KEY = "parameters"  # A1111's PNG text keyword
RECIPE_KEY = "stageflow"  # the PNG iTXt keyword / XMP field of the JSON
# Our denoise loop is DDIM on every backend (stageflow.inference.scheduler).
SAMPLER = "DDIM"
# A1111's "Model hash" is the first 10 hex digits of the checkpoint's sha256.
HASH_CHARS = 10


def _quote(value: object) -> str:
    """A1111's infotext quoting: a value with a comma, colon or newline goes
    in JSON quotes, so its parser's `Key: value,` split stays right."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _number(value: float) -> str:
    return f"{value:.6g}"


def _params(run: pb.StageRun) -> Any:
    kind = run.request.WhichOneof("params")
    return getattr(run.request, kind) if kind else None


def reused_stages(job: pb.Job) -> list[str]:
    """The stages a rerun kept from the previous version (those before rerun_from)."""
    names = [run.stage for run in job.stages]
    if job.version <= 1 or job.rerun_from not in names:
        return []
    return names[: names.index(job.rerun_from)]


def parameters_text(job: pb.Job) -> str:
    """The A1111 "parameters" text of a job version."""
    diffusion = [r for r in job.stages if r.request.WhichOneof("params") in ("txt2img", "refine")]
    first = diffusion[0] if diffusion else None
    params = _params(first) if first is not None else None
    negative = job.bundle.negative_prompt or (params.negative_prompt if params else "")
    entries: list[tuple[str, object]] = []
    if params is not None and params.HasField("steps"):
        entries.append(("Steps", params.steps))
    entries.append(("Sampler", SAMPLER))
    if params is not None and params.HasField("guidance_scale"):
        entries.append(("CFG scale", _number(params.guidance_scale)))
    entries.append(
        ("Seed", params.seed if params is not None and params.HasField("seed") else job.seed)
    )
    entries.append(("Size", f"{job.width}x{job.height}"))
    if first is not None and first.model.name:
        if first.model.fingerprint:
            entries.append(("Model hash", first.model.fingerprint[:HASH_CHARS]))
        entries.append(("Model", first.model.name))
    for run in job.stages:
        kind = run.request.WhichOneof("params")
        if kind == "refine" and run.request.refine.HasField("strength"):
            entries.append(("Denoising strength", _number(run.request.refine.strength)))
        if kind == "upscale":
            mode = stage_pb2.UpscaleMode.Name(run.request.upscale.mode)
            entries.append(("Upscaler", run.model.name or mode.removeprefix("UPSCALE_MODE_")))
    if job.bundle.overlay_text:
        entries.append(("Overlay text", job.bundle.overlay_text))
    entries.append(("Pipeline", job.pipeline or "default"))
    entries.append(("Job", job.job_id))
    entries.append(("Job version", job.version or 1))
    if job.rerun_from:
        entries.append(("Rerun from", job.rerun_from))
    tail = ", ".join(f"{key}: {_quote(value)}" for key, value in entries if value != "")
    lines = [job.prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(tail)
    return "\n".join(lines)


def recipe(job: pb.Job, *, stage: str = "") -> dict[str, Any]:
    """stageflow's own record of a job version; `stage` names whose output the
    image is (empty: the final image)."""
    reused = set(reused_stages(job))
    stages = []
    for run in job.stages:
        params = _params(run)
        entry: dict[str, Any] = {
            "stage": run.stage,
            "model": {
                "name": run.model.name,
                "version": run.model.version,
                "backend": run.model.backend,
                "fingerprint": run.model.fingerprint,
                "dtype": run.model.dtype,
            },
            "kind": run.request.WhichOneof("params") or "",
            "parameters": (
                json_format.MessageToDict(params, preserving_proto_field_name=True)
                if params is not None
                else {}
            ),
            "reused": run.stage in reused,
            "cache_hit": run.cache_hit,
            "output_sha256": run.output.sha256,
        }
        if run.HasField("text_check"):
            entry["text_check"] = json_format.MessageToDict(
                run.text_check, preserving_proto_field_name=True
            )
        stages.append(entry)
    return {
        "format": RECIPE_FORMAT,
        "job_id": job.job_id,
        "version": job.version or 1,
        "rerun_from": job.rerun_from,
        "image": {
            "stage": stage or (job.stages[-1].stage if job.stages else ""),
            "final": not stage,
        },
        "pipeline": {"name": job.pipeline or "default", "sha256": job.pipeline_sha256},
        "prompt": job.prompt,
        "bundle": json_format.MessageToDict(job.bundle, preserving_proto_field_name=True),
        "seed": job.seed,
        "width": job.width,
        "height": job.height,
        "stages": stages,
    }


def recipe_json(job: pb.Job, *, stage: str = "") -> str:
    return json.dumps(recipe(job, stage=stage), ensure_ascii=False, sort_keys=True)


def xmp(job: pb.Job, *, stage: str = "") -> bytes:
    """The XMP packet of an export: the parameters text as dc:description and
    stageflow:parameters, the JSON as stageflow:recipe."""
    text = parameters_text(job)
    return image_meta.xmp_packet(
        text, {"parameters": text, "recipe": recipe_json(job, stage=stage)}
    )


def with_recipe(data: bytes, job: pb.Job, *, stage: str = "") -> bytes:
    """`data` (PNG, JPEG or WebP) with the job version's recipe embedded."""
    if image_meta.image_format(data) == "png":
        return image_meta.png_with_text(
            data, {PARAMETERS_KEY: parameters_text(job), RECIPE_KEY: recipe_json(job, stage=stage)}
        )
    return image_meta.with_xmp(data, xmp(job, stage=stage))


def read_recipe(data: bytes) -> tuple[str, dict[str, Any]]:
    """The parameters text and the JSON recipe embedded in an image; empty
    ones where it carries none."""
    if image_meta.image_format(data) == "png":
        found = image_meta.png_text(data)
    else:
        packet = image_meta.read_xmp(data)
        found = image_meta.parse_xmp(packet) if packet else {}
        found = {PARAMETERS_KEY: found.get("parameters", ""), RECIPE_KEY: found.get("recipe", "")}
    raw = found.get(RECIPE_KEY, "")
    return found.get(PARAMETERS_KEY, ""), json.loads(raw) if raw else {}


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    elif isinstance(value, float):
        out[prefix] = _number(value)
    else:
        out[prefix] = str(value)


def flat_parameters(job: pb.Job) -> dict[str, str]:
    """A job version's parameters as ``{"dotted.name": "text"}``, in reading
    order: the pipeline, seed, size, the prompt bundle, then each stage's
    model and the exact parameters sent to it (`recipe`'s own, so a page and
    the exported image say the same). Unset fields are left out."""
    made = recipe(job)
    out: dict[str, str] = {
        "pipeline": made["pipeline"]["name"],
        "seed": str(made["seed"]),
        "size": f"{made['width']}x{made['height']}",
    }
    for name in ("base", "style", "overlay_text", "negative_prompt"):
        out[f"bundle.{name}"] = getattr(job.bundle, name)
    for stage in made["stages"]:
        model = stage["model"]
        if model["name"]:
            version = f"@{model['version']}" if model["version"] else ""
            out[f"{stage['stage']}.model"] = model["name"] + version
        _flatten(stage["stage"], stage["parameters"], out)
    return out


def changed_parameters(job: pb.Job, against: pb.Job | None) -> set[str]:
    """The `flat_parameters` names whose value differs between `job` and
    `against` (one only has counts as changed); none without `against`."""
    if against is None:
        return set()
    mine, theirs = flat_parameters(job), flat_parameters(against)
    return {name for name in mine.keys() | theirs.keys() if mine.get(name) != theirs.get(name)}


def select_version(versions: Sequence[pb.Job], version: int) -> pb.Job:
    """Version `version` (0: the latest) of a job's lineage; NotFound naming
    `version` and the versions there are otherwise."""
    if version == 0:
        return versions[-1]
    for job in versions:
        if (job.version or 1) == version:
            return job
    have = ", ".join(str(j.version or 1) for j in versions)
    raise NotFound(f"version: job {versions[-1].job_id} has no version {version} (has {have})")
