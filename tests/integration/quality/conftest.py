"""The trained fixtures served by real processes, and loaded in-process for
the tests that break a pipeline part on purpose."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import LocalStore, ObjectStore
from stageflow.inference.diffusion import Txt2ImgModel
from tests.integration.quality.shared import TRAINED_SD


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
