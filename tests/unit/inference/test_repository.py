"""The model repository: import, list, get, materialize (cache + digest checks),
compile, bad manifests. RepositoryContract runs over a local folder here and
over a real S3 server in tests/integration/test_s3_stores.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stageflow.core.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from stageflow.inference.base import folder_fingerprint
from stageflow.inference.interface import StageKind
from stageflow.inference.model_loader import RepositoryLoader
from stageflow.inference.registry import create_model
from stageflow.inference.repository import (
    Backend,
    InvalidManifest,
    ModelFormat,
    ModelRepository,
    parse_ref,
    version_order,
)
from stageflow.kinds.builtin import BASE, UPSCALE

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def remote_key(repo: ModelRepository, name: str, version: str, rel: str) -> str:
    return repo._key(name, version, rel)


BAD_MANIFESTS = [
    ("sizes.max_side", lambda m: m["sizes"].update(max_side=0)),
    ("kinds.0", lambda m: m.update(kinds=["painting"])),
    ("backend", lambda m: m.update(backend="cuda-magic")),
    ("fingerprint", lambda m: m.update(fingerprint="abc")),
    ("defaults.upscale.tile_sise", lambda m: m["defaults"].update(upscale={"tile_sise": 3})),
    ("defaults.upscale.tile_size", lambda m: m["defaults"].update(upscale={"tile_size": 99999})),
    ("files", lambda m: m.update(files={"../escape": m["files"]["config.json"]})),
    ("colour", lambda m: m.update(colour="blue")),
]


class FakeExport:
    fingerprint = "f" * 64
    settings: ClassVar[dict[str, object]] = {"opset": 17, "exporter": "fake"}


def fake_exporter(src: Path, dst: Path, *, fp16: bool = False, opset: int = 17) -> FakeExport:
    assert (src / "config.json").is_file()  # it got the materialized source
    (dst / "upscaler.onnx").write_bytes(b"graph" + bytes([fp16]))
    return FakeExport()


class RepositoryContract:
    """What every model repository does. A subclass provides the `repo` fixture
    (a fresh, empty repository)."""

    def test_import_detects_kinds_and_fingerprints_like_a_path_loaded_model(
        self, repo: ModelRepository, sd_folder: Path, esrgan_folder: Path
    ) -> None:
        sd = repo.import_folder(sd_folder, "tiny-sd", "1")
        assert sd.kinds == [StageKind.TXT2IMG, StageKind.REFINE]
        assert (sd.format, sd.backend, sd.architecture) == (
            ModelFormat.DIFFUSERS,
            Backend.TORCH,
            "sd",
        )
        assert (sd.sizes.min_side, sd.sizes.size_multiple) == (16, 16)
        # What the folder says about itself, its native side; steps, guidance and
        # strength are left to the model class (one owner per default).
        assert sd.defaults == {StageKind.TXT2IMG: {"width": 128, "height": 128}}
        # Same identity as the folder served by path: the stage cache keys agree.
        assert sd.fingerprint == folder_fingerprint(sd_folder)
        up = repo.import_folder(esrgan_folder, "tiny-esrgan", "1")
        assert (up.kinds, up.format) == ([StageKind.UPSCALE], ModelFormat.ESRGAN)
        assert up.defaults == {}
        assert [v.ref for v in repo.list()] == ["tiny-esrgan@1", "tiny-sd@1"]
        assert repo.get("tiny-sd", "1") == sd

    def test_latest_is_the_greatest_version_in_natural_order(
        self, repo: ModelRepository, esrgan_folder: Path
    ) -> None:
        for version in ("2", "10", "9"):
            repo.import_folder(esrgan_folder, "up", version)
        assert repo.versions("up") == ["2", "9", "10"]
        assert repo.get("up").version == "10"
        assert sorted(["1-onnx", "2", "1"], key=version_order) == ["1", "1-onnx", "2"]

    def test_unknown_model_or_version_is_not_found_listing_what_exists(
        self, repo: ModelRepository, esrgan_folder: Path
    ) -> None:
        repo.import_folder(esrgan_folder, "up", "1")
        with pytest.raises(NotFound, match=r"up@7 not found .*versions: 1"):
            repo.get("up", "7")
        with pytest.raises(NotFound, match=r"model nope not found .*models: up"):
            repo.get("nope")

    def test_import_refuses_duplicates_bad_names_and_unknown_folders(
        self, repo: ModelRepository, esrgan_folder: Path, tmp_path: Path
    ) -> None:
        repo.import_folder(esrgan_folder, "up", "1")
        with pytest.raises(FailedPrecondition, match="up@1 already exists"):
            repo.import_folder(esrgan_folder, "up", "1")
        with pytest.raises(InvalidArgument) as bad:
            repo.import_folder(esrgan_folder, "../up", "1")
        assert bad.value.field == "name"
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
        with pytest.raises(InvalidArgument, match="neither a diffusers"):
            repo.import_folder(tmp_path / "junk", "junk", "1")

    def test_import_stores_variants_beside_the_weights_and_leaves_the_source_alone(
        self, repo: ModelRepository, sd_folder: Path, tmp_path: Path
    ) -> None:
        import torch

        from stageflow.inference.sd_parts import stored_variant
        from stageflow.inference.variants import write_variant

        before = sorted(p.name for p in sd_folder.rglob("*"))
        created = repo.import_folder(sd_folder, "sd", "1", variants=["bf16"])
        assert sorted(p.name for p in sd_folder.rglob("*")) == before
        stored = sorted(rel for rel in created.files if ".bf16." in rel)
        assert stored == [
            "text_encoder/model.bf16.safetensors",
            "unet/diffusion_pytorch_model.bf16.safetensors",
            "vae/diffusion_pytorch_model.bf16.safetensors",
        ]
        # The folder's own files are all there too, with the same digests.
        plain = repo.import_folder(sd_folder, "sd", "plain")
        assert {k: v for k, v in created.files.items() if k not in stored} == plain.files
        assert created.fingerprint != plain.fingerprint  # every file counts
        # The cast `stageflow models variant` makes, byte for byte; the loader takes it.
        copy = Path(shutil.copytree(sd_folder, tmp_path / "copy"))
        write_variant(copy, "bf16")
        folder = repo.materialize("sd", "1")
        for rel in stored:
            assert (folder / rel).read_bytes() == (copy / rel).read_bytes(), rel
        assert stored_variant(folder / "unet", torch.bfloat16) == "bf16"

    def test_import_refuses_a_variant_it_cannot_store_before_any_work(
        self, repo: ModelRepository, sd_folder: Path, esrgan_folder: Path
    ) -> None:
        with pytest.raises(InvalidArgument, match="a variant is stored in fp16 or bf16") as e:
            repo.import_folder(sd_folder, "sd", "1", variants=["fp32"])
        assert e.value.field == "variant"
        with pytest.raises(InvalidArgument, match="variants are stored for diffusers") as e:
            repo.import_folder(esrgan_folder, "up", "1", variants=["bf16"])
        assert e.value.field == "variant"
        assert repo.list() == []

    def test_materialize_returns_the_verified_files(
        self, repo: ModelRepository, sd_folder: Path
    ) -> None:
        repo.import_folder(sd_folder, "tiny-sd", "1")
        folder = repo.materialize("tiny-sd", "1")
        assert (folder / UNET_WEIGHTS).read_bytes() == (sd_folder / UNET_WEIGHTS).read_bytes()
        assert folder_fingerprint(sd_folder) == repo.get("tiny-sd").fingerprint

    def test_corrupted_remote_file_is_data_loss_naming_the_file(
        self, repo: ModelRepository, sd_folder: Path
    ) -> None:
        repo.import_folder(sd_folder, "tiny-sd", "1")
        key = remote_key(repo, "tiny-sd", "1", UNET_WEIGHTS)
        data = bytearray(repo._store.get(key))
        data[-1] ^= 0xFF  # same size, other bytes
        repo._store.put(key, bytes(data))
        with pytest.raises(DataLoss, match=f"tiny-sd@1 .*{UNET_WEIGHTS}: sha256"):
            repo.materialize("tiny-sd", "1")
        assert not any(p.name.startswith(".download") for p in repo.cache_dir.rglob("*"))

    @pytest.mark.parametrize(("field", "change"), BAD_MANIFESTS, ids=[f for f, _ in BAD_MANIFESTS])
    def test_invalid_model_yaml_is_a_clear_error_naming_the_field(
        self, repo: ModelRepository, esrgan_folder: Path, field: str, change: Any
    ) -> None:
        import yaml

        repo.import_folder(esrgan_folder, "up", "1")
        key = remote_key(repo, "up", "1", "model.yaml")
        manifest = yaml.safe_load(repo._store.get(key))
        change(manifest)
        repo._store.put(key, yaml.safe_dump(manifest).encode())
        with pytest.raises(InvalidManifest) as err:
            repo.get("up", "1")
        assert "up/1/model.yaml" in err.value.message
        assert field in err.value.message, err.value.message
        versions, problems = repo.scan()  # listing skips it and says why
        assert versions == [] and field in problems[0]

    def test_sdxl_base_and_refiner_import_and_load_on_their_stages(
        self, repo: ModelRepository, sdxl_folder: Path, sdxl_refiner_folder: Path
    ) -> None:
        base = repo.import_folder(sdxl_folder, "xl", "1")
        refiner = repo.import_folder(sdxl_refiner_folder, "xl-refiner", "1")
        assert (base.architecture, base.kinds) == ("sdxl", ["txt2img", "refine"])
        # The refiner starts from an image: its model_index has no first text encoder.
        assert (refiner.architecture, refiner.kinds) == ("sdxl", ["refine"])
        loader = RepositoryLoader(
            repo, StageKind.TXT2IMG, create_model, families=BASE.families, torch_threads=1
        )
        model = loader.load("xl@1")
        try:
            assert model.describe().identity.fingerprint == base.fingerprint
        finally:
            model.unload()
        with pytest.raises(FailedPrecondition, match="xl-refiner@1 serves refine"):
            loader.load("xl-refiner@1")

    def test_loader_refuses_a_model_of_another_kind(
        self, repo: ModelRepository, esrgan_folder: Path
    ) -> None:
        repo.import_folder(esrgan_folder, "up", "1")
        loader = RepositoryLoader(repo, StageKind.TXT2IMG, create_model, families=BASE.families)
        with pytest.raises(
            FailedPrecondition, match="up@1 serves upscale; this stage runs txt2img"
        ):
            loader.load("up@1")

    def test_loaded_model_reports_the_versions_identity(
        self, repo: ModelRepository, esrgan_folder: Path
    ) -> None:
        created = repo.import_folder(esrgan_folder, "up", "3")
        model = RepositoryLoader(
            repo, StageKind.UPSCALE, create_model, families=UPSCALE.families, torch_threads=1
        ).load("up")
        try:
            identity = model.describe().identity
            assert (identity.name, identity.version, identity.backend) == ("up", "3", "torch")
            assert identity.fingerprint == created.fingerprint
            assert model.kind == StageKind.UPSCALE
        finally:
            model.unload()

    def test_a_version_served_with_dtype_auto_reports_the_choice(
        self, repo: ModelRepository, sd_folder: Path
    ) -> None:
        """The version's name and fingerprint, with the loaded model's resolved
        dtype (folded into the fingerprint), setting and reason."""
        from stageflow.inference import hardware, precision
        from stageflow.inference.base import weight_bytes

        created = repo.import_folder(sd_folder, "sd", "1")
        expected = hardware.choose_cast_dtype(
            "auto", hardware.detect(), weight_bytes=weight_bytes(sd_folder)
        )
        model = RepositoryLoader(
            repo,
            StageKind.TXT2IMG,
            create_model,
            families=BASE.families,
            torch_threads=1,
            model_options={"dtype": "auto"},
        ).load("sd@1")
        try:
            identity = model.describe().identity
        finally:
            model.unload()
        assert (identity.name, identity.version) == ("sd", "1")
        assert (identity.dtype, identity.dtype_setting) == (expected.dtype, "auto")
        assert identity.dtype_reason == expected.reason
        assert identity.cpu_features == expected.cpu_features
        assert identity.fingerprint == precision.with_dtype(created.fingerprint, expected.dtype)

    def test_a_version_served_compiled_reports_the_settings(
        self, repo: ModelRepository, sd_folder: Path
    ) -> None:
        """The loader passes compile and channels_last to the model (nothing
        compiles until a call: no warm-up here) and the version reports them."""
        created = repo.import_folder(sd_folder, "sd", "1")
        model = RepositoryLoader(
            repo,
            StageKind.TXT2IMG,
            create_model,
            families=BASE.families,
            torch_threads=1,
            model_options={"compile": "inductor", "channels_last": True},
        ).load("sd@1")
        try:
            identity = model.describe().identity
        finally:
            model.unload()
        assert (identity.compile, identity.channels_last) == ("inductor", True)
        assert identity.fingerprint == created.fingerprint

    def test_compile_records_a_new_version_from_the_exporter(
        self, repo: ModelRepository, esrgan_folder: Path
    ) -> None:
        repo.import_folder(esrgan_folder, "up", "1")
        compiled = repo.compile("up", exporter=fake_exporter)
        assert compiled.ref == "up@1-onnx"
        assert (compiled.format, compiled.backend) == (ModelFormat.ONNX, Backend.ONNXRUNTIME)
        assert compiled.source == "up@1" and compiled.fingerprint == "f" * 64
        assert compiled.export["exporter"] == "fake" and compiled.export["fp16"] is False
        assert list(compiled.files) == ["upscaler.onnx"]
        assert repo.get("up", "1-onnx") == compiled
        half = repo.compile("up", "1", fp16=True, exporter=fake_exporter)
        assert half.version == "1-onnx-fp16"
        with pytest.raises(FailedPrecondition, match="up@1-onnx already exists"):
            repo.compile("up", "1", exporter=fake_exporter)
        with pytest.raises(FailedPrecondition, match="already compiled"):
            repo.compile("up", "1-onnx", exporter=fake_exporter)
        with pytest.raises(InvalidArgument) as bad:
            repo.compile("up", "1", backend="coreml", exporter=fake_exporter)
        assert bad.value.field == "backend"


class TestLocalRepository(RepositoryContract):
    @pytest.fixture
    def repo(self, tmp_path: Path) -> ModelRepository:
        return ModelRepository(tmp_path / "repo", cache_dir=tmp_path / "cache")


def test_corrupt_weights_with_a_consistent_manifest_fail_to_load_clearly(
    tmp_path: Path, esrgan_folder: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(esrgan_folder, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    repo = ModelRepository(tmp_path / "repo")
    repo.import_folder(broken, "up", "1")
    loader = RepositoryLoader(repo, StageKind.UPSCALE, create_model, families=UPSCALE.families)
    with pytest.raises(FailedPrecondition, match=r"cannot load model up@1 from .*Error"):
        loader.load("up@1")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("tiny-sd@2", ("tiny-sd", "2")),
        ("tiny-sd", ("tiny-sd", "latest")),
        ("a@1-onnx", ("a", "1-onnx")),
    ],
)
def test_parse_ref(ref: str, expected: tuple[str, str]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "a@", "@1", "a/b@1", "a@1/2", "a b"])
def test_parse_ref_rejects_malformed_refs(ref: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_ref(ref)
    assert err.value.field == "model"
