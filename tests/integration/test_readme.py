"""The README is tested: the shell and Python blocks of its newcomer sections
run, in order, against one cluster this test starts, as a reader would run
them from a checkout.

Only the substitutions the README itself tells the reader to make are made:
the orchestrator's address `stageflow up` prints (the test's cluster listens
on a free port, like `stageflow up --port 0`), `JOB_ID` (the id `submit`
printed), and the stage addresses the `up` table prints (STAGE_ADDR,
BASE_ADDR). A `stageflow up` line is the cluster the test already runs (the
same LocalCluster). A block that must not run here is preceded by
`<!-- readme-test: skip: REASON -->`; a block without a marker in these
sections runs, so one added later is tested too.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stageflow.cli.cluster import LocalCluster

README = Path(__file__).resolve().parents[2] / "README.md"
# The newcomer's sections, by heading prefix, in README order.
SECTIONS = (
    "Two commands",
    "Using it",
    "The Python client",
    "Pipelines, the stage cache and reruns",
    "Batches, scheduling and durable jobs",
    "Models, backends and hot swap",
    "Load-testing one stage",
)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(?P<reason>\S.*?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
WAIT = 300


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    code: str
    line: int
    skip: str  # the marker's reason; "" runs it


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block under one of SECTIONS, with its skip marker."""
    blocks: list[Block] = []
    section, marker, start = "", "", 0
    lang: str | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if lang is not None:
            if line.startswith("```"):
                if any(section.startswith(name) for name in SECTIONS):
                    blocks.append(Block(section, lang, "\n".join(body), start, marker))
                lang, marker = None, ""
            else:
                body.append(line)
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        elif found := SKIP.search(line):
            marker = found["reason"]
        elif fence := FENCE.match(line):
            lang, body, start = fence["lang"], [], number
        elif line.strip():
            marker = ""  # a marker speaks for the block right after it
    return blocks


def test_every_block_of_the_newcomer_sections_is_shell_or_python_or_says_why_not() -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    found = {b.section for b in blocks}
    assert all(any(s.startswith(name) for s in found) for name in SECTIONS), found
    for block in blocks:
        assert block.skip or block.lang in ("bash", "python"), (
            f"README.md:{block.line} ({block.section}): a ```{block.lang} block that is "
            "neither bash nor python; mark it `<!-- readme-test: skip: REASON -->`"
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("readme-cluster")
    with LocalCluster(state_dir=state, orchestrator_port=0, torch_threads=1) as running:
        yield running


def _complete(command: str) -> bool:
    """No quote left open (comments, apostrophes in them included, aside)."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def shell_commands(code: str) -> list[str]:
    """The block's commands, one per entry as a reader types them: continued
    lines joined, a quote left open runs on to the next line, comments and a
    `stageflow up` line (the test's running cluster) left out."""
    commands, pending = [], ""
    for line in code.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\") or not _complete(pending):
            continue
        command, pending = pending, ""
        if not command.strip() or command.lstrip().startswith("#"):
            continue
        if re.match(r"^\s*(\.venv/bin/)?stageflow up\b", command):
            continue
        commands.append(command)
    assert not pending, f"an unfinished command: {pending}"
    return commands


def test_the_readme_runs_as_written(cluster: LocalCluster, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix))  # where `make setup` leaves it
    address = cluster.orchestrator_address
    env = {
        **os.environ,
        "STAGEFLOW_ADDRESS": address,
        "STAGEFLOW_MODEL_REPOSITORY": str(checkout / "models" / "repository"),
    }
    stage_addresses = {
        "STAGE_ADDR": cluster.addresses["base"],
        "BASE_ADDR": cluster.addresses["base"],
    }
    state = {"job_id": ""}
    ran = 0

    def run(argv: list[str], where: str, code: str) -> None:
        done = subprocess.run(
            argv, cwd=checkout, env=env, capture_output=True, text=True, timeout=WAIT
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{where} failed: {code}\n{output}"
        assert "Traceback" not in output, f"{where}:\n{output}"
        assert "[info" not in done.stdout, f"{where}: log lines on stdout:\n{done.stdout}"
        if submitted := re.search(r"submitted job (job-[0-9a-f]+)", output):
            state["job_id"] = state["job_id"] or submitted[1]
        if '--text "Chapter One"' in code and "submit" in code:
            # The first image is right: the typography pass read its text back exactly.
            assert "text check: 'Chapter One' (exact)" in output, f"{where}:\n{output}"

    def substituted(code: str, where: str) -> str:
        code = code.replace("127.0.0.1:50051", address)
        for name, value in stage_addresses.items():
            code = code.replace(name, value)
        if "JOB_ID" in code:
            assert state["job_id"], f"{where} uses JOB_ID before a submit printed one"
            code = code.replace("JOB_ID", state["job_id"])
        return code

    for block in readme_blocks(README.read_text(encoding="utf-8")):
        if block.skip or block.lang not in ("bash", "python"):
            continue
        where = f"README.md:{block.line} ({block.section})"
        if block.lang == "python":
            code = substituted(block.code, where)
            run([sys.executable, "-c", code], where, code)
        else:
            # One command at a time, as typed: JOB_ID is the one printed before it.
            for command in shell_commands(block.code):
                code = substituted(command, where)
                run(["bash", "-euo", "pipefail", "-c", code], where, code)
        ran += 1
    assert ran >= 6
    assert (checkout / "summary.jsonl").is_file() and (checkout / "report.json").is_file()
