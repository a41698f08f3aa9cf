"""Static checks of the container images (docker/*.Dockerfile, .dockerignore).

No Docker engine runs where stageflow is developed, so the images are checked
as text: multi-stage, a numeric non-root USER, exec-form ENTRYPOINT, no model
weights copied in, torch pinned, the same protoc call as `make proto`, and an
orchestrator image whose package list covers what `python -m orchestrator`
imports and nothing of the model stack. Every check is also run on a bad
Dockerfile, so each can fail.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from stageflow import kinds

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGES = {
    "stage": DOCKER / "stage.Dockerfile",
    "stage-cuda": DOCKER / "stage-cuda.Dockerfile",
    "orchestrator": DOCKER / "orchestrator.Dockerfile",
}
TORCH_PIN = "torch==2.13.0"
UID_GID = "10001:10001"
PORTS = {"50051", "9090"}
# What the Kubernetes manifests run (notes: issue-6 contract): a stage per
# kind of the default pipeline (stageflow.kinds), the generic stage entry,
# and the orchestrator.
K8S_MODULES = (
    *(f"stageflow.services.{name}" for name in kinds.default_pipeline()),
    "stageflow.stage",
    "stageflow.orchestrator",
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
# Imported when present, skipped when not (try/except ImportError): rich.pretty
# tries attrs, grpc tries grpc_tools for runtime protos. The dev venv has both.
OPTIONAL_IMPORTS = {"attr", "grpc_tools"}


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
                    elif not word.startswith("-"):
                        requirements.append(word)
                    i += 1
                found.append(PipInstall(requirements, options, editable))
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


def project_deps_excludes(stages: list[Stage]) -> list[str]:
    """The `--exclude` names of the builder's `project_deps.py` call, ARGs expanded."""
    args = {k: v for stage in stages for k, v in _args(stage).items()}
    for stage in stages:
        for run in stage.all("RUN"):
            for words in _commands(run.args):
                if not any(w.endswith("project_deps.py") for w in words):
                    continue
                names = words[words.index("--exclude") + 1 :] if "--exclude" in words else []
                expanded = []
                for name in names:
                    ref = re.fullmatch(r"\$\{?(\w+)\}?", name)
                    expanded += args[ref.group(1)].split() if ref else [name]
                return expanded
    raise AssertionError("no project_deps.py call in the Dockerfile")


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


# ---- the checks fail on a bad Dockerfile ------------------------------------

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
    assert [w.args for w in final.all("WORKDIR")][-1] == "/app"
    env = _env(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")  # `python`, `stageflow`
    exposed = {p for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert exposed >= PORTS
    # the runtime gets the venv and the code from the builder: no pip, nothing from the context
    assert not pip_installs([final])
    assert _copy_sources([final]) == []
    copied = {shlex.split(c.args)[-1] for c in final.all("COPY")}
    assert copied == {"/opt/venv", "/app"}


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


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_protoc_call_matches_make_proto(image: str) -> None:
    make = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    make_line = next(line for line in make.splitlines() if "grpc_tools.protoc" in line)
    make_args = shlex.split(make_line.split("grpc_tools.protoc", 1)[1])
    runs = [r for s in parse_dockerfile(_text(image)) for r in s.all("RUN")]
    commands = [c for r in runs for c in _commands(r.args) if "grpc_tools.protoc" in c]
    assert len(commands) == 1
    assert commands[0][commands[0].index("grpc_tools.protoc") + 1 :] == make_args


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_grpcio_tools_pinned_to_grpcio(image: str) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    grpcio = next(d for d in deps if Requirement(d).name == "grpcio")
    version = grpcio.split("==")[1]
    reqs = [r for i in pip_installs(parse_dockerfile(_text(image))) for r in i.requirements]
    assert f"grpcio-tools=={version}" in reqs


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_context_has_what_copy_needs(image: str) -> None:
    patterns = read_dockerignore((ROOT / ".dockerignore").read_text())
    stages = parse_dockerfile(_text(image))
    sources = _copy_sources(stages)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(patterns, source), f"{source} is in .dockerignore"
    # every first-party package the editable install expects is copied
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in find["packages"]["find"]["include"]}
    assert packages | {"pipelines", "protos"} <= set(sources)


@pytest.mark.parametrize(
    "path", [".venv", "models", "var", "gen", "out", ".git", ".mypy_cache", "fixtures/trained"]
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    patterns = read_dockerignore((ROOT / ".dockerignore").read_text())
    assert dockerignore_excludes(patterns, f"{path}/anything")


def test_cpu_torch_comes_first_from_the_cpu_index() -> None:
    installs = pip_installs(parse_dockerfile(_text("stage")))
    torch_at = next(i for i, inst in enumerate(installs) if TORCH_PIN in inst.requirements)
    assert installs[torch_at].options.get("--index-url") == "https://download.pytorch.org/whl/cpu"
    # before the project's requirements, whose torch==2.13.0 would pull PyPI's CUDA build
    project_at = next(i for i, inst in enumerate(installs) if "-r" in inst.options)
    assert torch_at < project_at
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert TORCH_PIN in deps


def test_cuda_image_uses_onnxruntime_gpu_and_optional_tensorrt() -> None:
    stages = parse_dockerfile(_text("stage-cuda"))
    assert stages[0].base.startswith("${CUDA_IMAGE}")
    text = _text("stage-cuda")
    default_base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, re.MULTILINE)
    assert default_base and default_base.group(1).startswith("nvidia/cuda:")
    assert "runtime" in default_base.group(1)
    reqs = [r for i in pip_installs(stages) for r in i.requirements]
    assert "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in reqs
    assert re.fullmatch(r"\d+\.\d+\.\d+", _args(stages[0])["ONNXRUNTIME_GPU_VERSION"])
    # the CPU onnxruntime is left out: both wheels install the same `onnxruntime` module
    assert "onnxruntime" in project_deps_excludes(stages)
    assert _args(stages[0])["TENSORRT_VERSION"] == ""  # TensorRT only when asked for


def test_orchestrator_image_installs_what_the_orchestrator_imports() -> None:
    stages = parse_dockerfile(_text("orchestrator"))
    excluded = project_deps_excludes(stages)
    assert {"torch", "diffusers", "transformers", "onnxruntime"} <= set(excluded)
    assert not [i for i in pip_installs(stages) if TORCH_PIN in i.requirements]
    kept = subprocess.run(
        [sys.executable, str(DOCKER / "project_deps.py"), "--exclude", *excluded],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    imported = imported_distributions(ORCHESTRATOR_GRAPH)
    assert "grpc" in imported  # the probe sees third-party imports at all
    assert image_dependency_problems(imported, kept, excluded) == []


def test_project_deps_refuses_an_unknown_exclude() -> None:
    result = subprocess.run(
        [sys.executable, str(DOCKER / "project_deps.py"), "--exclude", "torchh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "torchh" in result.stderr


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
def test_make_images_builds_the_three_contract_images() -> None:
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
    }
