"""The recipe an export carries: A1111 text, stageflow JSON, the PNG/JPEG/WebP
writers and readers, checked against Pillow and against A1111's own parser."""

from __future__ import annotations

import io
import re
import struct

import pytest
from PIL import Image

from stageflow.client.errors import NotFound
from stageflow.client.recipe import (
    parameters_text,
    read_recipe,
    recipe,
    reused_stages,
    select_version,
    with_recipe,
)
from stageflow.core import image_meta
from stageflow.core.errors import InvalidArgument
from stageflow.v1 import common_pb2, stage_pb2
from stageflow.v1 import orchestrator_pb2 as pb

FINGERPRINT = "ab12cd34ef" + "0" * 54


def _job(*, version: int = 1, rerun_from: str = "", prompt: str = "a red circle, moody") -> pb.Job:
    job = pb.Job(
        job_id="job-1",
        prompt=prompt,
        seed=42,
        width=32,
        height=32,
        pipeline="default",
        pipeline_sha256="9" * 64,
        version=version,
        rerun_from=rerun_from,
        bundle=pb.PromptBundle(base="a red circle", style="moody", negative_prompt="blurry"),
    )
    base = job.stages.add(stage="base", cache_hit=True)
    base.model.CopyFrom(
        common_pb2.ModelInfo(
            name="tiny-sd", version="1", backend="torch", fingerprint=FINGERPRINT, dtype="bf16"
        )
    )
    base.request.txt2img.CopyFrom(
        stage_pb2.Txt2ImgParams(
            prompt=prompt, steps=20, guidance_scale=7.5, seed=42, width=32, height=32
        )
    )
    base.output.sha256 = "1" * 64
    refine = job.stages.add(stage="refine")
    refine.model.name = "tiny-refine"
    refine.request.refine.strength = 0.3
    upscale = job.stages.add(stage="upscale")
    upscale.model.name = "tiny-upscaler"
    upscale.request.upscale.mode = stage_pb2.UPSCALE_MODE_LEARNED
    return job


# A1111's own reader (modules/infotext_utils.py parse_generation_parameters):
# the last line is the parameters line; `Key: value` pairs, JSON-quoted values.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> dict[str, str]:
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, done_with_prompt = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    found = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in RE_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            import json

            value = json.loads(value)
        found[key] = value
    return found


def test_parameters_text_is_a1111s_form_and_reads_back_with_its_parser() -> None:
    text = parameters_text(_job())
    lines = text.split("\n")
    assert lines[0] == "a red circle, moody"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        "Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 32x32, "
        "Model hash: ab12cd34ef, Model: tiny-sd"
    )
    parsed = a1111_parse(text)
    assert parsed["Prompt"] == "a red circle, moody"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Seed"] == "42" and parsed["Steps"] == "20" and parsed["Size"] == "32x32"
    assert parsed["Model hash"] == "ab12cd34ef" and parsed["Model"] == "tiny-sd"
    assert parsed["Denoising strength"] == "0.3" and parsed["Job"] == "job-1"


def test_a_value_with_commas_is_quoted_so_the_parser_keeps_it_whole() -> None:
    job = _job()
    job.bundle.overlay_text = "Chapter One: Dawn, Again"
    assert a1111_parse(parameters_text(job))["Overlay text"] == "Chapter One: Dawn, Again"


def test_recipe_json_names_models_parameters_and_reuse() -> None:
    job = _job(version=2, rerun_from="refine")
    made = recipe(job)
    assert made["job_id"] == "job-1" and made["version"] == 2
    assert made["pipeline"] == {"name": "default", "sha256": "9" * 64}
    base, refine, upscale = made["stages"]
    assert base["model"] == {
        "name": "tiny-sd",
        "version": "1",
        "backend": "torch",
        "fingerprint": FINGERPRINT,
        "dtype": "bf16",
    }
    assert base["parameters"]["steps"] == 20 and base["parameters"]["seed"] == "42"
    assert base["reused"] and base["cache_hit"]
    assert not refine["reused"] and refine["parameters"]["strength"] == pytest.approx(0.3)
    assert upscale["parameters"]["mode"] == "UPSCALE_MODE_LEARNED"
    assert made["image"] == {"stage": "upscale", "final": True}
    assert recipe(job, stage="base")["image"] == {"stage": "base", "final": False}
    assert reused_stages(_job()) == []


def _png(mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (8, 6), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def test_png_chunks_read_back_with_pillow_and_crcs_hold() -> None:
    job = _job(prompt="ein roter Kreis, café ✓")  # not Latin-1: iTXt
    png = with_recipe(_png(), job)
    with Image.open(io.BytesIO(png)) as image:
        image.load()  # Pillow checks every chunk's CRC
        assert image.info["parameters"] == parameters_text(job)
        assert image.text["stageflow"].startswith("{")  # type: ignore[attr-defined]
        assert image.size == (8, 6)
    text, made = read_recipe(png)
    assert text == parameters_text(job) and made["job_id"] == "job-1"
    # The pixels are those of the source.
    with Image.open(io.BytesIO(_png())) as a, Image.open(io.BytesIO(png)) as b:
        assert a.tobytes() == b.tobytes()


def test_embedding_twice_leaves_one_copy_and_latin1_text_is_text() -> None:
    png = with_recipe(with_recipe(_png(), _job()), _job(version=3))
    assert png.count(b"tEXtparameters") == 1 and png.count(b"stageflow\x00") == 1
    assert read_recipe(png)[1]["version"] == 3
    assert image_meta.png_without_text(png) == _png()  # Pillow writes no text chunk


def test_a_corrupted_text_chunk_is_refused() -> None:
    png = bytearray(with_recipe(_png(), _job()))
    at = png.find(b"tEXtparameters") + 20
    png[at] ^= 0xFF
    with pytest.raises(InvalidArgument, match="CRC"):
        image_meta.png_text(bytes(png))


@pytest.mark.parametrize(("fmt", "mode"), [("jpeg", "RGB"), ("webp", "RGB"), ("webp", "RGBA")])
def test_xmp_in_jpeg_and_webp_reads_back_with_pillow(fmt: str, mode: str) -> None:
    out = io.BytesIO()
    Image.new(mode, (9, 7), (10, 200, 10)).save(out, format=fmt.upper(), quality=90)
    job = _job()
    data = with_recipe(out.getvalue(), job)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (9, 7)
        xmp = image.info["xmp"]
    assert image_meta.parse_xmp(xmp)["description"] == parameters_text(job)
    text, made = read_recipe(data)
    assert text == parameters_text(job) and made["stages"][0]["model"]["name"] == "tiny-sd"
    if fmt == "webp":
        # Extended format: VP8X first with the XMP flag, the RIFF size right.
        assert data[12:16] == b"VP8X" and data[20] & 0x04
        assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
        assert struct.unpack("<I", data[24:27] + b"\0")[0] + 1 == 9


def test_select_version_names_the_versions_there_are() -> None:
    versions = [_job(), _job(version=2, rerun_from="refine")]
    assert select_version(versions, 0).version == 2
    assert select_version(versions, 1).version == 1
    with pytest.raises(NotFound, match=r"version: .* has no version 5 \(has 1, 2\)"):
        select_version(versions, 5)


def test_not_an_image_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument, match="image"):
        with_recipe(b"GIF89a....", _job())
