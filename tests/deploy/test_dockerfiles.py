"""Static checks of the container images (docker/*.Dockerfile, .dockerignore).

No Docker engine runs where stageflow is developed, so the images are checked
as text: multi-stage, a numeric non-root USER, exec-form ENTRYPOINT, no model
weights copied in, torch pinned, and the shape of the install: a wheel built
from the source in a stage of its own (`pip wheel --no-deps . -w /wheels`), the
dependencies of an extra (`stageflow[stage]`, `stageflow[orchestrator]`) in a
cached layer, then the wheel with --no-deps; no editable install, no `.pth`
file, no protoc, and a runtime stage that copies only the virtualenv. The
orchestrator image's extra covers what `python -m stageflow.orchestrator`
imports and nothing of the model stack. The wheel is built here from exactly
what the Dockerfiles copy. Every check is also run on bad Dockerfiles, so each
can fail.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from zipfile import ZipFile

import pytest
from packaging.requirements import Requirement

from stageflow import kinds

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGES = {
    "stage": DOCKER / "stage.Dockerfile",
    "stage-cuda": DOCKER / "stage-cuda.Dockerfile",
    "orchestrator": DOCKER / "orchestrator.Dockerfile",
    "gateway": DOCKER / "gateway.Dockerfile",
}
TORCH_PIN = "torch==2.13.0"
UID_GID = "10001:10001"
PORTS = {"50051", "9090"}
IMAGE_PORTS = {"gateway": {"8080"}}  # the others: PORTS
# What the Kubernetes manifests run (notes: issue-6 contract): a stage per
# kind of the default pipeline (stageflow.kinds), the generic stage entry,
# and the orchestrator.
K8S_MODULES = (
    *(f"stageflow.services.{name}" for name in kinds.default_pipeline()),
    "stageflow.stage",
    "stageflow.orchestrator",
    "stageflow.gateway",
)
# The orchestrator image's `stageflow` must submit/watch jobs and drive txt2img or
# orchestrator load tests; these modules are what that needs.
ORCHESTRATOR_GRAPH = (
    "stageflow.orchestrator.__main__",
    "stageflow.cli.main",
    "stageflow.client",
    "stageflow.cli.jobs",
    "stageflow.cli.batch",
    "stageflow.cli.rerun",
    "stageflow.cli.loadgen",
)
ALWAYS_PRESENT = {"stageflow", "pip", "setuptools"}
# Never in the orchestrator image (the model stack, by distribution name).
MODEL_STACK = (
    "torch",
    "diffusers",
    "transformers",
    "safetensors",
    "numpy",
    "pillow",
    "rapidocr",
    "onnxruntime",
    "onnx",
    "onnxscript",
)
VENV = "/opt/venv"
WHEELS = "/wheels"
# Imported when present, skipped when not (try/except ImportError): rich.pretty
# tries attrs, grpc tries grpc_tools for runtime protos, anyio (the gateway's
# starlette) tries sniffio, structlog tries greenlet (Playwright's, for the
# browser tests). The dev venv has them all.
OPTIONAL_IMPORTS = {"attr", "greenlet", "grpc_tools", "sniffio"}


# ---- a small Dockerfile reader ------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (parts and not line):
            continue  # comments (also inside a continuation) and parser directives
        if not line:
            continue
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        yield " ".join(p for p in parts if p)
        parts = []
    if parts:
        yield " ".join(parts)


def parse_dockerfile(text: str) -> list[Stage]:
    """Build stages in order; instructions before the first FROM (global ARGs) are dropped."""
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def _commands(run_args: str) -> list[list[str]]:
    """A RUN line as simple commands (split on ; && || |), each a list of words
    without its redirections (`> file`)."""
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    redirect = False
    for word in lexer:
        if redirect:
            redirect = False  # the redirection's target
        elif word and set(word) <= set("<>"):
            redirect = True
        elif word and set(word) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


_PIP_VALUE_OPTIONS = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
}


@dataclass(frozen=True)
class PipInstall:
    requirements: list[str]  # positional requirement specifiers
    options: dict[str, str]  # value options, last one wins (-r, --index-url, ...)
    editable: bool
    flags: frozenset[str] = frozenset()  # options without a value (--no-deps, ...)


def pip_installs(stages: Iterable[Stage]) -> list[PipInstall]:
    """Every `pip install` in every RUN, in order."""
    found = []
    for stage in stages:
        for run in stage.all("RUN"):
            for words in _commands(run.args):
                names = [Path(w).name for w in words]
                if "pip" not in names or "install" not in words:
                    continue
                rest = words[words.index("install") + 1 :]
                requirements: list[str] = []
                options: dict[str, str] = {}
                flags: set[str] = set()
                editable = False
                i = 0
                while i < len(rest):
                    word = rest[i]
                    option, eq, value = word.partition("=")
                    if option in _PIP_VALUE_OPTIONS:
                        if not eq:
                            value = rest[i + 1] if i + 1 < len(rest) else ""
                            i += 1
                        editable = editable or option in {"-e", "--editable"}
                        options[option] = value
                    elif word.startswith("-"):
                        flags.add(word)
                    else:
                        requirements.append(word)
                    i += 1
                found.append(PipInstall(requirements, options, editable, frozenset(flags)))
    return found


# ---- the checks: each returns the problems it found ---------------------------


def check_multi_stage(text: str) -> list[str]:
    stages = parse_dockerfile(text)
    if len(stages) < 2:
        return [f"{len(stages)} FROM: build in one stage, copy only the result into another"]
    return []


def check_non_root_user(text: str) -> list[str]:
    final = parse_dockerfile(text)[-1]
    users = final.all("USER")
    if not users:
        return ["final stage has no USER: the container runs as root"]
    uid, _, gid = users[-1].args.partition(":")
    problems = []
    for what, value in (("uid", uid), ("gid", gid)):
        if what == "gid" and not value:
            continue
        if not value.isdigit():
            # Kubernetes' runAsNonRoot can only verify a numeric user.
            problems.append(f"USER {users[-1].args}: {what} must be numeric")
        elif int(value) == 0:
            problems.append(f"USER {users[-1].args}: {what} 0 is root")
    return problems


def check_exec_form_entrypoint(text: str) -> list[str]:
    final = parse_dockerfile(text)[-1]
    problems = []
    if not final.all("ENTRYPOINT"):
        problems.append("final stage has no ENTRYPOINT")
    for ins in final.all("ENTRYPOINT") + final.all("CMD"):
        try:
            value = json.loads(ins.args)
        except json.JSONDecodeError:
            value = None
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            # shell form runs /bin/sh -c as PID 1: SIGTERM never reaches python
            problems.append(f"{ins.keyword} {ins.args}: not exec form (a JSON list)")
    return problems


_WEIGHTS = re.compile(
    r"(^|/)(models|fixtures)(/|$)|\.(safetensors|onnx|pt|pth|ckpt|bin|engine|plan)$", re.IGNORECASE
)


def check_no_models(text: str) -> list[str]:
    """Models come from the model repository at start, never from the image."""
    problems = []
    for stage in parse_dockerfile(text):
        for ins in stage.all("COPY") + stage.all("ADD"):
            exec_form = ins.args.startswith("[")
            words = json.loads(ins.args) if exec_form else shlex.split(ins.args)
            if any(w.startswith("--from=") for w in words):
                continue  # from another build stage, not from the context
            paths = [w for w in words if not w.startswith("--")]
            for source in paths[:-1]:
                clean = source.rstrip("/") or "/"
                if clean in {".", "./", "*", "/"}:
                    problems.append(f"{ins.keyword} {ins.args}: copies the whole build context")
                elif _WEIGHTS.search(clean):
                    problems.append(f"{ins.keyword} {ins.args}: copies model weights")
        for run in stage.all("RUN"):
            if "build-fixtures" in run.args or re.search(r"\bmodels\s+import\b", run.args):
                problems.append(f"RUN {run.args[:60]}...: builds models into the image")
    return problems


_TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio)(?![\w-])")


def check_pip_pins(text: str) -> list[str]:
    """Every package named on a pip command line carries ==; torch is exactly TORCH_PIN."""
    problems = []
    for install in pip_installs(parse_dockerfile(text)):
        for req in install.requirements:
            if req in {".", "./"} or req.startswith(("/", "./")):
                continue
            family = _TORCH_FAMILY.match(req)
            if family and family.group(1) == "torch" and req != TORCH_PIN:
                problems.append(f"pip install {req}: torch must be {TORCH_PIN}")
            elif "==" not in req:
                problems.append(f"pip install {req}: not pinned with ==")
    return problems


def _copies_from(stage: Stage) -> list[tuple[str, list[str]]]:
    """(source stage, [sources..., destination]) of each `COPY --from=...` of STAGE."""
    found = []
    for ins in stage.all("COPY"):
        words = shlex.split(ins.args)
        source = next((w.removeprefix("--from=") for w in words if w.startswith("--from=")), None)
        if source is not None:
            found.append((source, [w for w in words if not w.startswith("--")]))
    return found


def _builds_the_wheel(words: list[str]) -> bool:
    """`pip wheel --no-deps . -w /wheels` (or `python -m pip wheel ...`)."""
    names = [Path(w).name for w in words]
    if "pip" not in names or "wheel" not in words or words.index("wheel") < names.index("pip"):
        return False
    out = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in {"-w", "--wheel-dir"}), "")
    return "--no-deps" in words and "." in words and out == WHEELS


def _stage_named(stages: list[Stage], name: str) -> Stage | None:
    return next((s for s in stages if s.name == name), None)


def check_installs_the_built_wheel(text: str) -> list[str]:
    """A stage builds the wheel; the stage whose venv the runtime copies installs the
    dependencies first (their own layers, cached) and then that wheel, --no-deps."""
    stages = parse_dockerfile(text)
    wheel = next(
        (
            s
            for s in stages
            if any(_builds_the_wheel(c) for r in s.all("RUN") for c in _commands(r.args))
        ),
        None,
    )
    if wheel is None:
        return [f"no stage builds the wheel: pip wheel --no-deps . -w {WHEELS}"]
    venv_from = [src for src, paths in _copies_from(stages[-1]) if paths[:1] == [VENV]]
    builder = _stage_named(stages, venv_from[0]) if venv_from else None
    if builder is None:
        return [f"the runtime stage copies no {VENV} from a build stage"]
    problems = []
    if not any(src == wheel.name and paths[:1] == [WHEELS] for src, paths in _copies_from(builder)):
        problems.append(f"{builder.name} does not COPY --from={wheel.name} {WHEELS}")
    installs = pip_installs([builder])
    at = [
        i
        for i, inst in enumerate(installs)
        if any(r.startswith(f"{WHEELS}/") and r.endswith(".whl") for r in inst.requirements)
    ]
    if not at:
        return [*problems, f"{builder.name} does not pip install the wheel from {WHEELS}"]
    if "--no-deps" not in installs[at[-1]].flags:
        problems.append("the wheel is installed without --no-deps: pip would resolve again")
    if at[-1] != len(installs) - 1:
        problems.append("a pip install after the wheel: dependencies go first, in their own layer")
    if not any("-r" in inst.options for inst in installs[: at[-1]]):
        problems.append("no `pip install -r` of the dependencies before the wheel")
    return problems


def check_no_editable_install(text: str) -> list[str]:
    problems = []
    for install in pip_installs(parse_dockerfile(text)):
        if install.editable:
            problems.append("pip install -e: an editable install needs the source in the image")
        if {".", "./"} & set(install.requirements):
            problems.append("pip install .: installs the source tree, not the built wheel")
    return problems


def check_no_pth(text: str) -> list[str]:
    """Nothing reaches sys.path through a .pth file: the wheel holds all the code."""
    return [
        f"RUN {run.args[:70]}...: writes a .pth file"
        for stage in parse_dockerfile(text)
        for run in stage.all("RUN")
        if re.search(r"\.pth\b", run.args)
    ]


def check_no_protoc(text: str) -> list[str]:
    """The generated code is committed in stageflow/v1 and comes with the wheel."""
    return [
        f"RUN {run.args[:70]}...: runs or installs protoc"
        for stage in parse_dockerfile(text)
        for run in stage.all("RUN")
        if re.search(r"grpc_tools|grpcio-tools|\bprotoc\b", run.args)
    ]


def check_runtime_copies_only_the_venv(text: str) -> list[str]:
    final = parse_dockerfile(text)[-1]
    problems = []
    for ins in final.all("ADD"):
        problems.append(f"ADD {ins.args}: the runtime stage copies only the virtualenv")
    for ins in final.all("COPY"):
        words = shlex.split(ins.args)
        paths = [w for w in words if not w.startswith("--")]
        if not any(w.startswith("--from=") for w in words):
            problems.append(f"COPY {ins.args}: copies from the build context into the runtime")
        elif paths != [VENV, VENV]:
            problems.append(f"COPY {ins.args}: the runtime stage copies only {VENV}")
    if not [paths for _, paths in _copies_from(final) if paths == [VENV, VENV]]:
        problems.append(f"the runtime stage copies no {VENV}")
    if pip_installs([final]):
        problems.append("pip install in the runtime stage")
    return problems


def read_dockerignore(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule, simplified: a pattern matching the path or a parent excludes it,
    `!` re-includes, the last matching pattern wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").strip().removeprefix("./").strip("/")
        variants = {pat, pat.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            excluded = not negate
    return excluded


# ---- helpers over the real files --------------------------------------------


def _text(image: str) -> str:
    return IMAGES[image].read_text()


def _args(stage: Stage) -> dict[str, str]:
    values = {}
    for ins in stage.all("ARG"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            values[key] = value
    return values


def _env(stage: Stage) -> dict[str, str]:
    values = {}
    for ins in stage.all("ENV"):
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:  # legacy `ENV KEY value`
            values[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            values[key] = value
    return values


def _copy_sources(stages: Iterable[Stage]) -> list[str]:
    sources = []
    for stage in stages:
        for ins in stage.all("COPY"):
            words = shlex.split(ins.args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def project_deps() -> ModuleType:
    """docker/project_deps.py, the script the images run to list their requirements."""
    spec = importlib.util.spec_from_file_location("project_deps", DOCKER / "project_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_deps_call(stages: list[Stage]) -> list[str]:
    """The arguments of the builder's `project_deps.py` call, ARGs expanded."""
    args = {k: v for stage in stages for k, v in _args(stage).items()}
    for stage in stages:
        for run in stage.all("RUN"):
            for words in _commands(run.args):
                script = [i for i, w in enumerate(words) if w.endswith("project_deps.py")]
                if not script:
                    continue
                expanded = []
                for word in words[script[0] + 1 :]:
                    ref = re.fullmatch(r"\$\{?(\w+)\}?", word)
                    expanded += args[ref.group(1)].split() if ref else [word]
                return expanded
    raise AssertionError("no project_deps.py call in the Dockerfile")


def image_requirements(image: str) -> tuple[list[str], list[str], list[str]]:
    """(extras, excluded names, requirements) of IMAGE's dependency layer."""
    deps = project_deps()
    call = deps.parser().parse_args(project_deps_call(parse_dockerfile(_text(image))))
    requirements = deps.project_requirements(ROOT / "pyproject.toml", call.extra, call.exclude)
    return call.extra, call.exclude, requirements


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots: Iterable[str]) -> set[str]:
    """The installed distributions `pip install ROOTS` pulls in (extras not followed)."""
    seen: set[str] = set()
    todo = [_normalise(Requirement(r).name) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_normalise(req.name))
    return seen


def imported_distributions(modules: Iterable[str]) -> dict[str, list[str]]:
    """Top-level module -> its distributions, for everything importing MODULES loads.

    In a fresh interpreter, so what this test process imported does not count.
    """
    probe = (
        "import importlib, json, sys\n"
        "from importlib.metadata import packages_distributions\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "dists = packages_distributions()\n"
        "top = {m.partition('.')[0] for m in list(sys.modules)}\n"
        "print(json.dumps({m: dists[m] for m in sorted(top) if m in dists}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    found: dict[str, list[str]] = json.loads(out)
    return {m: [_normalise(d) for d in ds] for m, ds in found.items()}


def image_dependency_problems(
    imported: dict[str, list[str]], kept: Iterable[str], excluded: Iterable[str]
) -> list[str]:
    """What an image installing KEPT (not EXCLUDED) would lack to import IMPORTED."""
    left_out = {_normalise(n) for n in excluded}
    closure = requirement_closure(kept) | ALWAYS_PRESENT
    problems = []
    for module, dists in sorted(imported.items()):
        if module in OPTIONAL_IMPORTS:
            continue
        if set(dists) & left_out:
            problems.append(f"imports {module} ({', '.join(dists)}), left out of the image")
        elif not set(dists) & closure:
            problems.append(f"imports {module} ({', '.join(dists)}), not installed by the image")
    return problems


# ---- the checks fail on bad Dockerfiles -------------------------------------

BAD = """\
FROM python:3.11-slim
RUN pip install torch diffusers && pip install torchvision==0.1 "torch>=2"
COPY . /app
COPY models/tiny-sd /app/models/tiny-sd
ADD fixtures/trained/shapes-sd/unet.safetensors /app/
RUN stageflow models build-fixtures --out /app/models
USER root
ENTRYPOINT python -m stageflow.services.base
"""

# The images as they were before the wheel: protoc in the builder, an editable
# install, generated code on sys.path through a .pth, the source tree in the runtime.
EDITABLE = """\
FROM python:3.11-slim AS builder
RUN python -m venv /opt/tools && /opt/tools/bin/pip install grpcio-tools==1.85.1
RUN python -m venv /opt/venv
COPY pyproject.toml requirements.lock docker/project_deps.py ./
RUN python project_deps.py > /tmp/requirements.txt \\
 && pip install -c requirements.lock -r /tmp/requirements.txt
COPY serving ./serving
RUN mkdir -p gen && /opt/tools/bin/python -m grpc_tools.protoc -Iprotos \\
      --python_out=gen --pyi_out=gen --grpc_python_out=gen protos/stageflow/v1/*.proto
RUN pip install --no-deps -e . \\
 && echo /app/gen > "$(python -c 'import site; print(site.getsitepackages()[0])')/gen.pth"
FROM python:3.11-slim AS runtime
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY serving /app/serving
USER 10001:10001
ENTRYPOINT ["python", "-m", "stageflow.orchestrator"]
"""

# A wheel, but installed with its dependencies resolved again, and dependencies after it.
WHEEL_WITH_DEPS = """\
FROM python:3.11-slim AS wheel
COPY stageflow ./stageflow
RUN pip wheel --no-deps . -w /wheels
FROM python:3.11-slim AS builder
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/stageflow-*.whl
RUN pip install -r requirements.txt
FROM python:3.11-slim
COPY --from=builder /opt/venv /opt/venv
USER 10001
ENTRYPOINT ["python"]
"""


def test_checks_catch_a_bad_dockerfile() -> None:
    assert check_multi_stage(BAD)
    assert check_non_root_user(BAD) == ["USER root: uid must be numeric"]
    assert check_exec_form_entrypoint(BAD) == [
        "ENTRYPOINT python -m stageflow.services.base: not exec form (a JSON list)"
    ]
    problems = check_no_models(BAD)
    assert any("whole build context" in p for p in problems)
    assert sum("copies model weights" in p for p in problems) == 2
    assert any("builds models into the image" in p for p in problems)
    pins = check_pip_pins(BAD)
    assert "pip install torch: torch must be torch==2.13.0" in pins
    assert "pip install torch>=2: torch must be torch==2.13.0" in pins
    assert "pip install diffusers: not pinned with ==" in pins
    assert not any("torchvision" in p for p in pins)  # pinned, if oddly
    assert check_installs_the_built_wheel(BAD) == [
        "no stage builds the wheel: pip wheel --no-deps . -w /wheels"
    ]
    runtime = check_runtime_copies_only_the_venv(BAD)
    assert "COPY . /app: copies from the build context into the runtime" in runtime
    assert "ADD fixtures/trained/shapes-sd/unet.safetensors /app/: the runtime stage copies" in (
        " ".join(runtime)
    )
    assert "pip install in the runtime stage" in runtime


def test_checks_catch_the_editable_install() -> None:
    assert check_no_editable_install(EDITABLE) == [
        "pip install -e: an editable install needs the source in the image"
    ]
    assert check_no_editable_install("FROM a\nRUN pip install --no-deps .\n") == [
        "pip install .: installs the source tree, not the built wheel"
    ]
    (pth,) = check_no_pth(EDITABLE)
    assert "writes a .pth file" in pth
    assert len(check_no_protoc(EDITABLE)) == 2  # installed, then run
    assert check_runtime_copies_only_the_venv(EDITABLE) == [
        "COPY --from=builder /app /app: the runtime stage copies only /opt/venv",
        "COPY serving /app/serving: copies from the build context into the runtime",
    ]
    assert check_installs_the_built_wheel(EDITABLE) == [
        "no stage builds the wheel: pip wheel --no-deps . -w /wheels"
    ]


def test_checks_catch_a_wheel_installed_with_its_dependencies() -> None:
    assert check_installs_the_built_wheel(WHEEL_WITH_DEPS) == [
        "the wheel is installed without --no-deps: pip would resolve again",
        "a pip install after the wheel: dependencies go first, in their own layer",
        "no `pip install -r` of the dependencies before the wheel",
    ]
    other_dir = WHEEL_WITH_DEPS.replace("-w /wheels", "-w /dist")
    assert check_installs_the_built_wheel(other_dir) == [
        "no stage builds the wheel: pip wheel --no-deps . -w /wheels"
    ]
    no_copy = WHEEL_WITH_DEPS.replace("COPY --from=wheel /wheels /wheels\n", "")
    assert "builder does not COPY --from=wheel /wheels" in check_installs_the_built_wheel(no_copy)
    assert check_runtime_copies_only_the_venv(WHEEL_WITH_DEPS) == []


@pytest.mark.parametrize(
    ("user", "problem"),
    [
        ("0", "uid 0 is root"),
        ("10001:0", "gid 0 is root"),
        ("app:10001", "uid must be numeric"),
        ("10001:10001", None),
    ],
)
def test_user_check(user: str, problem: str | None) -> None:
    text = f'FROM a AS b\nFROM c\nUSER {user}\nENTRYPOINT ["x"]\n'
    problems = check_non_root_user(text)
    assert problems == ([f"USER {user}: {problem}"] if problem else [])


def test_user_of_an_earlier_stage_does_not_count() -> None:
    text = 'FROM a AS builder\nUSER 10001\nFROM b\nENTRYPOINT ["x"]\n'
    assert check_non_root_user(text) == ["final stage has no USER: the container runs as root"]


def test_dockerignore_matcher() -> None:
    patterns = ["models", "**/__pycache__", "docs", "!docs/deploy.md", "*.egg-info"]
    assert dockerignore_excludes(patterns, "models/tiny-sd/unet/model.safetensors")
    assert dockerignore_excludes(patterns, "serving/__pycache__/x.pyc")
    assert dockerignore_excludes(patterns, "__pycache__/x.pyc")
    assert dockerignore_excludes(patterns, "stageflow.egg-info/PKG-INFO")
    assert dockerignore_excludes(patterns, "docs/benchmarks.md")
    assert not dockerignore_excludes(patterns, "docs/deploy.md")
    assert not dockerignore_excludes(patterns, "serving/server.py")
    assert not dockerignore_excludes(patterns, "modelsx")


def test_image_dependency_check_flags_missing_and_left_out_packages() -> None:
    imported = {"numpy": ["numpy"], "yaml": ["pyyaml"], "grpc": ["grpcio"]}
    problems = image_dependency_problems(imported, kept=["grpcio==1.85.1"], excluded=["numpy"])
    assert problems == [
        "imports numpy (numpy), left out of the image",
        "imports yaml (pyyaml), not installed by the image",
    ]


# ---- the real images --------------------------------------------------------

CHECKS = [
    check_multi_stage,
    check_non_root_user,
    check_exec_form_entrypoint,
    check_no_models,
    check_pip_pins,
    check_installs_the_built_wheel,
    check_no_editable_install,
    check_no_pth,
    check_no_protoc,
    check_runtime_copies_only_the_venv,
]


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_images_pass_the_checks(image: str, check: object) -> None:
    assert callable(check)
    assert check(_text(image)) == []


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_runtime_stage_follows_the_contract(image: str) -> None:
    final = parse_dockerfile(_text(image))[-1]
    assert final.all("USER")[-1].args == UID_GID
    env = _env(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith(f"{VENV}/bin:")  # `python`, `stageflow`
    exposed = {p for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert exposed >= IMAGE_PORTS.get(image, PORTS)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_runs_a_real_module(image: str) -> None:
    entry = json.loads(parse_dockerfile(_text(image))[-1].all("ENTRYPOINT")[-1].args)
    assert entry[:2] == ["python", "-m"]
    assert entry[2] in K8S_MODULES


@pytest.mark.parametrize("module", K8S_MODULES)
def test_k8s_entry_modules_exist(module: str) -> None:
    assert importlib.util.find_spec(f"{module}.__main__") is not None, module


def test_stageflow_console_script_exists() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    target = scripts["stageflow"]
    module, _, attribute = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def _wheel_stage(image: str) -> Stage:
    stages = parse_dockerfile(_text(image))
    return next(
        s
        for s in stages
        if any(_builds_the_wheel(c) for r in s.all("RUN") for c in _commands(r.args))
    )


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_context_has_what_copy_needs(image: str) -> None:
    patterns = read_dockerignore((ROOT / ".dockerignore").read_text())
    sources = _copy_sources(parse_dockerfile(_text(image)))
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(patterns, source), f"{source} is in .dockerignore"
    # The wheel stage copies the package, what pyproject.toml names (its readme),
    # and the folders that the package's links point to (the build follows them).
    wheel_sources = set(_copy_sources([_wheel_stage(image)]))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= wheel_sources
    links = [p for p in (ROOT / "stageflow").iterdir() if p.is_symlink()]
    assert {p.name for p in links} == {"orchestrator", "services", "pipelines", "gateway"}
    for link in links:
        target = Path(os.path.normpath(link.parent / os.readlink(link))).relative_to(ROOT)
        assert target.as_posix() in wheel_sources, f"{link.name} -> {target} is not copied"


@pytest.mark.parametrize(
    "path", [".venv", "models", "var", "gen", "out", ".git", ".mypy_cache", "fixtures/trained"]
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    patterns = read_dockerignore((ROOT / ".dockerignore").read_text())
    assert dockerignore_excludes(patterns, f"{path}/anything")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from exactly what the stage image's wheel stage copies
    from the build context (less what .dockerignore drops), as `pip wheel` there."""
    patterns = read_dockerignore((ROOT / ".dockerignore").read_text())
    context = tmp_path_factory.mktemp("context")
    for ins in _wheel_stage("stage").all("COPY"):
        *sources, destination = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        for source in sources:
            target = context / destination if destination.endswith("/") else context
            src = ROOT / source
            dst = (target / src.name) if destination.endswith("/") else context / destination
            if src.is_dir():
                shutil.copytree(
                    src,
                    dst,
                    symlinks=True,  # as COPY does: links inside a folder stay links
                    ignore=lambda folder, names: [
                        n
                        for n in names
                        if dockerignore_excludes(
                            patterns, (Path(folder) / n).relative_to(ROOT).as_posix()
                        )
                    ],
                )
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    out = tmp_path_factory.mktemp("wheels")
    # --no-build-isolation: the dev venv's setuptools, offline; the image's build
    # gets setuptools from [build-system] in an isolated environment instead.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(out), str(context)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("stageflow-*.whl")
    return built


def test_the_wheel_holds_all_of_stageflow_and_nothing_else(wheel: Path) -> None:
    names = ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"stageflow"}  # nothing with a generic name at the top of site-packages
    assert not [n for n in names if n.endswith(".pth")]
    files = set(names)
    for proto in sorted((ROOT / "protos" / "stageflow" / "v1").glob("*.proto")):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert f"stageflow/v1/{proto.stem}{suffix}" in files  # the committed generated code
    # the linked folders, followed: their files are in the wheel, not links
    for module in K8S_MODULES:
        assert f"{module.replace('.', '/')}/__main__.py" in files, module
    for spec in sorted((ROOT / "pipelines").glob("*.yaml")):
        assert f"stageflow/pipelines/{spec.name}" in files
    entry_points = ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    )
    assert b"stageflow = stageflow.cli.main:app" in entry_points


def test_cpu_torch_comes_first_from_the_cpu_index() -> None:
    installs = pip_installs(parse_dockerfile(_text("stage")))
    torch_at = next(i for i, inst in enumerate(installs) if TORCH_PIN in inst.requirements)
    assert installs[torch_at].options.get("--index-url") == "https://download.pytorch.org/whl/cpu"
    # before the stage extra's requirements, whose torch==2.13.0 would pull PyPI's CUDA build
    project_at = next(i for i, inst in enumerate(installs) if "-r" in inst.options)
    assert torch_at < project_at
    extras, _, requirements = image_requirements("stage")
    assert extras == ["stage"] and TORCH_PIN in requirements


def test_cuda_image_uses_onnxruntime_gpu_and_optional_tensorrt() -> None:
    stages = parse_dockerfile(_text("stage-cuda"))
    builder = _stage_named(stages, "builder")
    assert builder is not None and builder.base.startswith("${CUDA_IMAGE}")
    assert stages[-1].base.startswith("${CUDA_IMAGE}")
    text = _text("stage-cuda")
    default_base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, re.MULTILINE)
    assert default_base and default_base.group(1).startswith("nvidia/cuda:")
    assert "runtime" in default_base.group(1)
    reqs = [r for i in pip_installs(stages) for r in i.requirements]
    assert "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in reqs
    assert re.fullmatch(r"\d+\.\d+\.\d+", _args(builder)["ONNXRUNTIME_GPU_VERSION"])
    # the CPU onnxruntime is left out: both wheels install the same `onnxruntime` module
    extras, excluded, requirements = image_requirements("stage-cuda")
    assert extras == ["stage"] and excluded == ["onnxruntime"]
    assert TORCH_PIN in requirements
    assert "onnxruntime" not in {project_deps().requirement_name(r) for r in requirements}
    assert _args(builder)["TENSORRT_VERSION"] == ""  # TensorRT only when asked for


def test_orchestrator_image_installs_what_the_orchestrator_imports() -> None:
    stages = parse_dockerfile(_text("orchestrator"))
    extras, excluded, kept = image_requirements("orchestrator")
    assert extras == ["orchestrator"] and excluded == []
    assert not [i for i in pip_installs(stages) if TORCH_PIN in i.requirements]
    # nothing of the model stack, not even pulled in by another package
    assert not requirement_closure(kept) & {_normalise(n) for n in MODEL_STACK}
    imported = imported_distributions(ORCHESTRATOR_GRAPH)
    assert "grpc" in imported  # the probe sees third-party imports at all
    assert image_dependency_problems(imported, kept, MODEL_STACK) == []


def test_gateway_image_installs_what_the_gateway_imports() -> None:
    stages = parse_dockerfile(_text("gateway"))
    extras, excluded, kept = image_requirements("gateway")
    assert extras == ["gateway"] and excluded == []
    assert not [i for i in pip_installs(stages) if TORCH_PIN in i.requirements]
    # Pillow yes (uploads, WebP/JPEG), nothing else of the model stack
    no_models = {_normalise(n) for n in MODEL_STACK} - {"pillow"}
    assert not requirement_closure(kept) & no_models
    imported = imported_distributions(("stageflow.gateway.__main__",))
    assert {"fastapi", "uvicorn", "pillow"} <= {d for ds in imported.values() for d in ds}
    assert image_dependency_problems(imported, kept, tuple(no_models)) == []


def test_project_deps_follows_the_projects_own_extras() -> None:
    deps = project_deps()
    pyproject = ROOT / "pyproject.toml"
    optional = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    base = deps.project_requirements(pyproject)
    serving = deps.project_requirements(pyproject, ["serving"])
    stage = deps.project_requirements(pyproject, ["stage"])
    assert serving == base + optional["serving"]  # in order, the base first
    assert "stageflow[serving]" in optional["stage"]
    assert stage == serving + [r for r in optional["stage"] if not r.startswith("stageflow")]
    orchestrator = [
        r for r in optional["orchestrator"] if not r.startswith("stageflow") and r not in stage
    ]
    assert orchestrator, "the orchestrator extra adds its job store's driver (psycopg)"
    gateway = [
        r
        for r in optional["gateway"]
        if not r.startswith("stageflow") and r not in stage + orchestrator
    ]
    # each requirement once (Pillow is the stage's and the gateway's), in the
    # order `all` names the extras
    assert deps.project_requirements(pyproject, ["all"]) == stage + orchestrator + gateway
    assert not any(deps.requirement_name(r) == "stageflow" for r in stage)


def test_project_deps_refuses_an_unknown_exclude_or_extra() -> None:
    for args, named in ((["--exclude", "torchh"], "torchh"), (["--extra", "stag"], "stag")):
        result = subprocess.run(
            [sys.executable, str(DOCKER / "project_deps.py"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        assert named in result.stderr
    # torch is not a base dependency: excluding it without the stage extra is a typo
    with pytest.raises(ValueError, match="torch"):
        project_deps().project_requirements(ROOT / "pyproject.toml", [], ["torch"])


# ---- make images ------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@needs_make
def test_make_images_says_it_needs_a_docker_engine() -> None:
    # `false info` fails like `docker info` without a daemon
    result = subprocess.run(
        ["make", "-s", "images", "DOCKER=false"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "needs a Docker engine" in result.stderr


@needs_make
def test_make_images_builds_the_four_contract_images() -> None:
    result = subprocess.run(
        ["make", "-n", "images", "REGISTRY=registry.example.com", "IMAGE_TAG=v9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    builds = [line for line in result.stdout.replace("\\\n", " ").splitlines() if " build " in line]
    built = {}
    for line in builds:
        words = shlex.split(line)
        built[words[words.index("-t") + 1]] = Path(words[words.index("-f") + 1]).name
    prefix = "registry.example.com/stageflow"
    assert built == {
        f"{prefix}/stage:v9": "stage.Dockerfile",
        f"{prefix}/stage-cuda:v9": "stage-cuda.Dockerfile",
        f"{prefix}/orchestrator:v9": "orchestrator.Dockerfile",
        f"{prefix}/gateway:v9": "gateway.Dockerfile",
    }
