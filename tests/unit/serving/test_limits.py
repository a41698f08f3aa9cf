"""Every request field's maximum: enforced in one linear pass, and documented
on the field in the protos (the table and the comments say the same)."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, struct_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

from stageflow.core import limits
from stageflow.core.errors import InvalidArgument
from stageflow.serving.limits import MAXIMA, check_request
from stageflow.v1 import orchestrator_pb2, stage_pb2

ROOT = Path(__file__).resolve().parents[3]
S = orchestrator_pb2

STRING, BYTES, MESSAGE = (
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
)
REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


def _descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    """The protos with their comments, compiled in process (protoc's library)."""
    out = tmp_path / "set.pb"
    well_known = resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *sorted(str(p) for p in (ROOT / "protos/stageflow/v1").glob("*.proto")),
        ]
    )
    assert code == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _request_messages(files: descriptor_pb2.FileDescriptorSet) -> set[str]:
    """Every message reachable from an RPC's request type."""
    messages = {f"{f.package}.{m.name}": m for f in files.file for m in f.message_type}
    todo = [
        method.input_type.lstrip(".")
        for f in files.file
        for service in f.service
        for method in service.method
    ]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in messages:
            continue
        seen.add(name)
        for fd in messages[name].field:
            if fd.type == MESSAGE:
                todo.append(fd.type_name.lstrip("."))
    return seen


def test_every_string_and_repeated_request_field_has_a_documented_maximum(
    tmp_path: Path,
) -> None:
    files = _descriptor_set(tmp_path)
    wanted = _request_messages(files)
    assert "stageflow.v1.SubmitJobRequest" in wanted and "stageflow.v1.RunRequest" in wanted
    undocumented, unlisted = [], []
    for f in files.file:
        comments = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location}
        for i, msg in enumerate(f.message_type):
            full = f"{f.package}.{msg.name}"
            if full not in wanted:
                continue
            for j, fd in enumerate(msg.field):
                bounded = fd.type in (STRING, BYTES) or fd.label == REPEATED
                if not bounded:
                    continue
                limit = MAXIMA.get(full, {}).get(fd.name)
                if limit is None:
                    unlisted.append(f"{full}.{fd.name}")
                    continue
                if f"at most {limit} " not in comments.get((4, i, 2, j), "").lower():
                    undocumented.append(f"{full}.{fd.name} (At most {limit})")
    assert unlisted == []
    assert undocumented == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (S.GetJobRequest(job_id="j" * 10_000), "job_id"),
        (S.SubmitJobRequest(stages=["base"] * 25_000), "stages"),
        (S.SubmitJobRequest(bundle=S.PromptBundle(base="b" * 5_000_000)), "bundle.base"),
        (S.ListJobsRequest(state=77), "state"),  # type: ignore[arg-type]
        (S.SubmitJobRequest(refine=S.RefineOptions(mode=42)), "refine.mode"),  # type: ignore[arg-type]
        (
            S.SubmitJobRequest(refine=S.RefineOptions(mask_box=stage_pb2.Box(top=float("nan")))),
            "refine.mask_box.top",
        ),
        (S.RerunJobRequest(options={f"k{i}": struct_pb2.Struct() for i in range(17)}), "options"),
        (S.GetArtifactRequest(key="k" * 1025), "key"),
        (stage_pb2.RunRequest(output_prefix="p" * 257), "output_prefix"),
        (stage_pb2.RunRequest(image={"key": "k" * 5000}), "image.key"),
        (
            stage_pb2.RunRequest(txt2img=stage_pb2.Txt2ImgParams(guidance_scale=float("inf"))),
            "guidance_scale",  # as the stage names it
        ),
        (stage_pb2.LoadModelRequest(model="m" * 200), "model"),
    ],
)
def test_an_oversized_or_unknown_value_names_its_field_quickly(
    request_: object, field: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidArgument) as err:
        check_request(request_)  # type: ignore[arg-type]
    assert time.perf_counter() - started < 0.05
    assert err.value.field == field
    assert len(err.value.message) < 200


def test_options_structs_take_scalars_within_bounds() -> None:
    values = struct_pb2.Struct()
    values.update({"amount": 0.5, "name": "x", "on": True})
    check_request(S.SubmitJobRequest(options={"sharpen": values}))
    for bad, field in (
        ({"nested": {"a": 1}}, "options.sharpen.nested"),
        ({"long": "x" * (limits.MAX_OPTION_VALUE_CHARS + 1)}, "options.sharpen.long"),
        ({f"k{i}": 1 for i in range(limits.MAX_OPTION_KEYS + 1)}, "options.sharpen"),
    ):
        struct = struct_pb2.Struct()
        struct.update(bad)
        with pytest.raises(InvalidArgument) as err:
            check_request(S.SubmitJobRequest(options={"sharpen": struct}))
        assert err.value.field == field


def test_unknown_fields_are_dropped_and_a_valid_request_passes() -> None:
    request = S.GetJobRequest(job_id="abc")
    junk = S.GetJobRequest.FromString(request.SerializeToString() + b"\xa2\x06\x03xyz")
    assert junk.SerializeToString() != request.SerializeToString()  # kept by the parser
    check_request(junk)
    assert junk.SerializeToString() == request.SerializeToString()


def test_quote_cuts_long_values() -> None:
    assert limits.quote("abc") == "'abc'"
    quoted = limits.quote("x" * 10_000)
    assert len(quoted) < 80 and "10000 characters" in quoted
