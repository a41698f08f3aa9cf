"""The digest cache: a restart does not re-hash unchanged files, a change is seen."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from stageflow.inference.base import folder_fingerprint
from stageflow.inference.digests import DigestCache


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "weights.bin").write_bytes(b"\1" * 4096)
    (root / "config.json").write_text("{}")
    return root


def test_unchanged_files_are_not_rehashed_across_restarts(folder: Path, tmp_path: Path) -> None:
    first = DigestCache(tmp_path / "digests")
    expected = folder_fingerprint(folder)  # no cache: every byte hashed
    assert folder_fingerprint(folder, first) == expected and first.hashed == 2
    restarted = DigestCache(tmp_path / "digests")  # a new process, the same cache folder
    assert folder_fingerprint(folder, restarted) == expected
    assert restarted.hashed == 0


@pytest.mark.parametrize("change", ["same-size rewrite", "restored mtime", "replaced file"])
def test_a_changed_file_is_rehashed_and_changes_the_fingerprint(
    folder: Path, tmp_path: Path, change: str
) -> None:
    cache = DigestCache(tmp_path / "digests")
    before = folder_fingerprint(folder, cache)
    weights = folder / "unet" / "weights.bin"
    stat = weights.stat()
    if change == "replaced file":
        scratch = folder / "unet" / ".new"
        scratch.write_bytes(b"\2" * 4096)
        os.replace(scratch, weights)  # a new inode
    else:
        with weights.open("r+b") as f:
            f.write(b"\2")  # same size
    if change == "restored mtime":
        # What a careless copy does: the old mtime back. The ctime still moved.
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert weights.stat().st_mtime_ns == stat.st_mtime_ns
    again = DigestCache(tmp_path / "digests")
    after = folder_fingerprint(folder, again)
    assert again.hashed == 1
    assert after != before and after == folder_fingerprint(folder)


def test_a_corrupt_cache_file_is_ignored(folder: Path, tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "digests")
    expected = folder_fingerprint(folder, cache)
    for entry in (tmp_path / "digests").iterdir():
        entry.write_text("{not json")
    again = DigestCache(tmp_path / "digests")
    assert folder_fingerprint(folder, again) == expected and again.hashed == 2


def test_materialize_verifies_through_the_cache(tmp_path: Path, sd_folder: Path) -> None:
    """The repository's check of a version's files (every load) uses the cache too,
    and a corrupted file is still DATA_LOSS."""
    from stageflow.core.errors import DataLoss
    from stageflow.inference.repository import ModelRepository

    repo = ModelRepository(tmp_path / "repo", digests=DigestCache(tmp_path / "digests"))
    repo.import_folder(sd_folder, "sd", "1")
    repo.materialize("sd", "1")
    warm = ModelRepository(tmp_path / "repo", digests=DigestCache(tmp_path / "digests"))
    folder = warm.materialize("sd", "1")
    assert warm.digests.hashed == 0
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataLoss, match=r"vae/diffusion_pytorch_model\.safetensors: sha256"):
        ModelRepository(tmp_path / "repo", digests=DigestCache(tmp_path / "digests")).materialize(
            "sd", "1"
        )


def test_a_stage_model_reload_hashes_nothing_unchanged(tmp_path: Path, sd_folder: Path) -> None:
    """The stage's digest_cache setting reaches the model: a second start of the
    same folder re-hashes no file and reports the same fingerprint."""
    from stageflow.inference.diffusion import Txt2ImgModel

    first = Txt2ImgModel(sd_folder, digest_cache=tmp_path / "digests")
    first.load()
    assert first.digests.hashed > 0
    second = Txt2ImgModel(sd_folder, digest_cache=tmp_path / "digests")
    second.load()
    assert second.digests.hashed == 0
    assert (
        second.identity.fingerprint == first.identity.fingerprint == folder_fingerprint(sd_folder)
    )


def test_warmup_runs_the_parts_before_the_model_is_ready(sd_folder: Path) -> None:
    from stageflow.inference import backends
    from stageflow.inference.diffusion import Txt2ImgModel

    model = Txt2ImgModel(sd_folder, warmup=True)
    calls: list[str] = []
    load = model.runtime.diffusion

    def counting(folder: Path, options: backends.BackendOptions) -> Any:
        parts = load(folder, options)
        noise, decode = parts.predict_noise, parts.decode_latents

        def unet(*args: Any) -> Any:
            calls.append("unet")
            return noise(*args)

        def vae(z: Any) -> Any:
            calls.append(f"vae {tuple(z.shape)}")
            return decode(z)

        parts.predict_noise, parts.decode_latents = unet, vae
        return parts

    model.runtime = backends.Backend(**{**model.runtime.__dict__, "diffusion": counting})
    model.load()
    # Two guided steps and one decode, at the fixture's native 128 px (latents 16).
    assert calls == ["unet", "unet", "vae (1, 4, 16, 16)"]
