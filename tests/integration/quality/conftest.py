"""The trained fixtures served by real processes, and loaded in-process for
the tests that break a pipeline part on purpose."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import LocalStore, ObjectStore
from stageflow.inference.diffusion import Txt2ImgModel
from tests.integration.quality.shared import GATE_DTYPES, TRAINED_SD, BaseStage


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # The stage processes run with --torch-threads 1; so does the comparison side.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # No models_dir: the cluster's default, the committed trained fixtures.
    state = tmp_path_factory.mktemp("trained-cluster")
    with LocalCluster(state_dir=state, torch_threads=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def trained_store(trained_cluster: LocalCluster) -> ObjectStore:
    return LocalStore(trained_cluster.state_dir / "store")


@pytest.fixture(scope="session")
def trained_txt2img() -> Iterator[Txt2ImgModel]:
    model = Txt2ImgModel(TRAINED_SD)
    model.load()
    yield model
    model.unload()


@pytest.fixture(scope="session")
def bf16_trained_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The trained base stage alone, started with --dtype bf16."""
    root = tmp_path_factory.mktemp("trained-bf16")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "default.yaml").write_text("stages:\n  - stage: base\n")
    with LocalCluster(
        state_dir=root / "state",
        torch_threads=1,
        stages=("base",),
        stage_args={"base": ["--dtype", "bf16"]},
        orchestrator_args=["--pipelines-dir", str(root / "pipelines")],
    ) as cluster:
        yield cluster


@pytest.fixture(params=GATE_DTYPES)
def trained_base(request: pytest.FixtureRequest) -> BaseStage:
    """The trained base stage in each gate precision (the bf16 one started on first use)."""
    dtype = str(request.param)
    name = "trained_cluster" if dtype == "fp32" else f"{dtype}_trained_cluster"
    cluster: LocalCluster = request.getfixturevalue(name)
    return BaseStage(dtype, cluster.addresses["base"], LocalStore(cluster.state_dir / "store"))


@pytest.fixture(scope="session", params=GATE_DTYPES)
def gate_txt2img(request: pytest.FixtureRequest) -> Iterator[Txt2ImgModel]:
    """The trained model in-process, in each gate precision."""
    model = Txt2ImgModel(TRAINED_SD, dtype=str(request.param))
    model.load()
    yield model
    model.unload()
