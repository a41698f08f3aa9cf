"""The job page's pure parts: version columns (reuse, cache hits, the
typography check), the parameter rows, and the rerun form's request."""

from __future__ import annotations

from stageflow.gateway.workspace import rerun_form
from stageflow.gateway.workspace.versions import columns, parameter_rows
from stageflow.v1 import orchestrator_pb2 as pb
from tests.unit.client.test_recipe import _job


def _succeeded(job: pb.Job) -> pb.Job:
    job.state = pb.JOB_STATE_SUCCEEDED
    job.final.key = f"final-v{job.version}.png"
    for run in job.stages:
        run.state = pb.STAGE_STATE_SUCCEEDED
        run.output.key = f"{run.stage}-v{job.version}.png"
    return job


def _lineage() -> list[pb.Job]:
    """v1; v2 rerun from refine with new text; v3 rerun from upscale."""
    v1 = _succeeded(_job())
    v2 = _succeeded(_job(version=2, rerun_from="refine"))
    v2.bundle.overlay_text = "SALE"
    v2.stages[1].request.refine.text = "SALE"
    v2.stages[1].text_check.text = "SALE"
    v2.stages[1].text_check.ocr_text = "SALF"
    v2.stages[1].text_check.cer = 0.25
    v2.stages[1].text_check.attempts = 2
    v3 = _succeeded(_job(version=3, rerun_from="upscale"))
    v3.bundle.overlay_text = "SALE"
    v3.stages[1].CopyFrom(v2.stages[1])
    v3.stages[2].cache_hit = True
    return [v1, v2, v3]


def test_a_kept_stage_names_the_version_that_ran_it() -> None:
    v1, v2, v3 = columns(_lineage())
    assert [c.reused_from for c in v1.stages] == [None, None, None]
    assert [c.reused_from for c in v2.stages] == [1, None, None]
    # v3 kept v2's refine, and v2's base, which v2 had kept from v1.
    assert [c.reused_from for c in v3.stages] == [1, 2, None]
    assert v3.stages[2].cache_hit and not v3.stages[1].cache_hit
    assert v1.stages[0].cache_hit  # the fixture's base came from the stage cache
    check = v2.stages[1].text_check
    assert check is not None and (check.ocr_text, check.cer, check.attempts) == ("SALF", 0.25, 2)
    assert v1.stages[1].text_check is None
    assert v2.rerun_from == "refine" and v2.has_final and v2.finished and v2.state == "succeeded"
    assert v2.changed == {"bundle.overlay_text", "refine.text"} and v1.changed == set()


def test_a_running_version_has_no_final_and_pending_stages_no_image() -> None:
    v1, v2 = _lineage()[:2]
    v2.state = pb.JOB_STATE_RUNNING
    v2.ClearField("final")
    v2.stages[2].state = pb.STAGE_STATE_PENDING
    v2.stages[2].ClearField("output")
    column = columns([v1, v2])[1]
    assert not column.finished and not column.has_final and column.state == "running"
    assert [c.has_output for c in column.stages] == [True, True, False]


def test_parameter_rows_mark_each_change_against_the_version_before() -> None:
    rows = {row.name: row for row in parameter_rows(_lineage())}
    text = rows["bundle.overlay_text"]
    assert [(c.value, c.changed) for c in text.cells] == [
        ("", False),
        ("SALE", True),
        ("SALE", False),
    ]
    assert text.varies and not rows["seed"].varies
    assert [c.value for c in rows["refine.text"].cells] == [None, "SALE", "SALE"]


def test_the_form_is_prefilled_with_what_each_stage_was_sent() -> None:
    v2 = _lineage()[1]
    values = rerun_form.prefill(v2)
    assert values["bundle.overlay_text"] == "SALE" and values["bundle.base"] == "a red circle"
    assert values["base.steps"] == "20" and values["base.guidance_scale"] == "7.5"
    assert values["refine.strength"] == "0.3"
    assert values["refine.seed"] == ""  # unset: the stage took the job's seed
    names = [f.name for f in rerun_form.fields_for(v2)]
    assert "upscale.mode" not in names and "refine.strength" in names
    only_base = _job()
    del only_base.stages[1:]
    assert not any(f.group == "refine" for f in rerun_form.fields_for(only_base))


def test_only_what_differs_from_the_latest_version_is_sent() -> None:
    lineage = _lineage()
    form = {**rerun_form.prefill(lineage[0]), "refine.strength": " 0.5 ", "refine.seed": "7"}
    built = rerun_form.build("job-1", "refine", form, lineage)
    assert built.errors == {}
    request = built.request
    assert request.job_id == "job-1" and request.from_stage == "refine"
    # v1's text is "", v3's (the latest) is "SALE": going back to v1's is a change.
    assert request.bundle.HasField("overlay_text") and request.bundle.overlay_text == ""
    assert not request.bundle.HasField("base") and not request.HasField("base")
    assert abs(request.refine.strength - 0.5) < 1e-6 and request.refine.seed == 7
    assert not request.refine.HasField("steps")
    assert built.values["refine.strength"] == " 0.5 "  # shown again as typed


def test_a_field_that_does_not_parse_is_an_error_naming_it() -> None:
    lineage = _lineage()
    form = {
        "refine.steps": "ten",
        "refine.strength": "nan",
        "refine.seed": str(2**70),
        "base.steps": "",
        "bundle.base": "line one\r\nline two",
    }
    built = rerun_form.build("job-1", "refine", form, lineage)
    assert built.errors == {
        "refine.steps": "must be a whole number",
        "refine.strength": "must be a finite number",
        "refine.seed": f"out of range, got {str(2**70)[:32]}",
        "base.steps": "a rerun keeps the last value (20); enter one",
    }
    assert built.request.bundle.base == "line one\nline two"
