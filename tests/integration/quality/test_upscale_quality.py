"""The upscale stage, over gRPC: the learned x4 beats bicubic on scenes it
never saw, and its Lanczos mode is exactly Pillow's Lanczos."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stageflow.cli.cluster import LocalCluster
from stageflow.core.storage import ObjectStore
from stageflow.inference.training import data
from stageflow.inference.training.train_upscaler import pair
from stageflow.v1 import stage_pb2
from tests.integration.quality import stage_calls

MIN_GAIN_DB = 0.8
# A seed training never uses (it draws from seed + 11 with seed 0).
EVAL_SEED = 1234


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse)


async def test_learned_upscale_beats_bicubic_on_held_out_scenes(
    trained_cluster: LocalCluster, trained_store: ObjectStore
) -> None:
    address = trained_cluster.addresses["upscale"]
    gains = []
    for spec in data.specs(EVAL_SEED, 12, list(data.HELD_OUT)):
        low, high = pair(spec)
        learned = await stage_calls.upscale(
            address, trained_store, low, stage_pb2.UPSCALE_MODE_LEARNED
        )
        assert learned.size == high.size
        bicubic = low.resize(high.size, Image.Resampling.BICUBIC)
        gains.append(psnr(learned, high) - psnr(bicubic, high))
    assert float(np.mean(gains)) >= MIN_GAIN_DB, gains


async def test_lanczos_mode_equals_pillow_lanczos(
    trained_cluster: LocalCluster, trained_store: ObjectStore
) -> None:
    low, _ = pair(next(data.specs(EVAL_SEED, 1, list(data.HELD_OUT))))
    out = await stage_calls.upscale(
        trained_cluster.addresses["upscale"], trained_store, low, stage_pb2.UPSCALE_MODE_LANCZOS
    )
    expected = low.resize((low.width * 4, low.height * 4), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(expected))
