"""Environment variables are read only through settings objects: no module of
stageflow, orchestrator/ or services/ reads os.environ or getenv outside a
settings class (a class named ...Settings: the pydantic ones built on
stageflow.core.settings, and the slim client's dataclasses with their
`from_env`, which may not import pydantic).

Handing the whole environment on to a child process (`{**os.environ, ...}`,
`os.environ.copy()`) reads no variable and is allowed, and so is each entry of
NOT_SETTINGS, which says why it is no setting.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("stageflow", "orchestrator", "services")
# (file, code): why it reads the environment without being a setting.
NOT_SETTINGS = {
    ("stageflow/serving/processes.py", "os.environ"): (
        "resolves a child's program on the PATH it will run with, as exec does"
    ),
}


def environment_reads(source: str, filename: str = "<string>") -> list[str]:
    """`file:line: code` of each read of the environment in SOURCE."""
    tree = ast.parse(source, filename)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def in_settings_class(node: ast.AST) -> bool:
        while (node := parents.get(node)) is not None:  # type: ignore[assignment]
            if isinstance(node, ast.ClassDef) and node.name.endswith("Settings"):
                return True
        return False

    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if in_settings_class(node):
            continue
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            parent = parents.get(node)
            passed_on = (
                isinstance(parent, ast.Dict)
                and node in parent.values
                and (
                    parent.keys[parent.values.index(node)] is None  # {**os.environ}
                )
            )
            copied = isinstance(parent, ast.Attribute) and parent.attr == "copy"
            if not (passed_on or copied):
                found.append(node)
        elif isinstance(node, ast.Attribute | ast.Name) and (
            getattr(node, "attr", None) == "getenv" or getattr(node, "id", None) == "getenv"
        ):
            found.append(node)
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    return [
        f"{filename}:{n.lineno}: {code}"
        for n in found
        if (filename, code := ast.get_source_segment(source, n)) not in NOT_SETTINGS
    ]


def test_the_checker_finds_each_kind_of_read() -> None:
    code = (
        "import os\nfrom os import getenv\n"
        "a = os.environ.get('STAGEFLOW_X')\n"
        "b = os.environ['STAGEFLOW_Y']\n"
        "env = os.environ\n"
        "c = getenv('STAGEFLOW_Z')\n"
        "d = os.getenv('HOME')\n"
        "child = {**os.environ, 'PYTHONUNBUFFERED': '1'}\n"
        "also = os.environ.copy()\n"
        "class ClientSettings:\n"
        "    def from_env(cls): return cls(os.environ.get('STAGEFLOW_ADDRESS'))\n"
        "class Client:\n"
        "    address = os.environ.get('STAGEFLOW_ADDRESS')\n"
    )
    assert [line.split(":")[1] for line in environment_reads(code)] == [
        "3",
        "4",
        "5",
        "6",
        "7",
        "13",  # outside a settings class
    ]


def test_nothing_reads_the_environment_but_the_settings() -> None:
    files = {
        path.resolve()
        for folder in SOURCES
        for path in (ROOT / folder).rglob("*.py")
        if "v1" not in path.relative_to(ROOT).parts[:2]  # generated code
    }
    assert len(files) > 50  # the walk found the code
    reads = [
        read
        for path in sorted(files)
        for read in environment_reads(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert reads == [], "read these through a settings object:\n" + "\n".join(reads)
