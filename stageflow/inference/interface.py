"""What a stage model is, independent of any transport.

A stage process plugs one `StageModel` into the shared stage servicer. The
servicer validates a request with `model.validate(params)` before any work,
then calls `model.run(...)` in a worker thread. Images cross this boundary as
PIL images; nothing here knows about gRPC or protobuf.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from PIL import Image

from stageflow.core import limits
from stageflow.core.errors import InvalidArgument


class StageKind(enum.StrEnum):
    """The model layer's own kinds. A kind is a plain string: a kind declared
    elsewhere (stageflow.kinds) names its params type with `stage_params`."""

    TXT2IMG = "txt2img"
    REFINE = "refine"
    UPSCALE = "upscale"


# Model kind -> the dataclass of its parameters, filled by `stage_params`.
_PARAMS_TYPES: dict[str, type] = {}


_T = TypeVar("_T", bound=type)


def stage_params(kind: str) -> Callable[[_T], _T]:
    """Class decorator: `cls` is the parameter type of models of `kind`.

    The model repository validates model.yaml defaults against it, and the
    stage codec decodes requests into it.
    """

    def register(cls: _T) -> _T:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__}: stage params must be a dataclass")
        known = _PARAMS_TYPES.get(kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"kind {kind!r} already has params type {known.__name__}")
        _PARAMS_TYPES[kind] = cls
        return cls

    return register


def params_type_of(kind: str) -> type:
    """The params dataclass of `kind`; ValueError naming the known kinds."""
    try:
        return _PARAMS_TYPES[kind]
    except KeyError:
        raise ValueError(
            f"unknown stage kind {kind!r}; known: {', '.join(known_kinds())}"
        ) from None


def known_kinds() -> tuple[str, ...]:
    return tuple(_PARAMS_TYPES)


def bounded(lo: float, hi: float) -> dict[str, Any]:
    """Field metadata: the inclusive range a numeric parameter must lie in."""
    return {"range": (lo, hi)}


# Step caching (stageflow.inference.step_cache): a full UNet evaluation every
# `cache_interval` steps, the shallow branch over cached deep features between;
# 1 is off. Past 10 nearly every step reuses one full step's features.
CACHE_INTERVAL_RANGE = (1, 10)


@stage_params(StageKind.TXT2IMG)
@dataclass(frozen=True)
class Txt2ImgParams:
    prompt: str
    negative_prompt: str = ""
    width: int = 128
    height: int = 128
    steps: int = field(default=20, metadata=bounded(1, 200))
    guidance_scale: float = field(default=7.5, metadata=bounded(1.0, 30.0))
    seed: int = field(default=0, metadata=bounded(0, 2**63 - 1))
    # The fraction of the schedule to run (diffusers' denoising_end). Below 1
    # the stage stops there and outputs its latents, not an image, for a
    # refine stage to continue from (latent hand-off: RefineParams.denoising_start).
    denoising_end: float = field(default=1.0, metadata=bounded(0.01, 1.0))
    # Step caching: a full UNet call every `cache_interval` steps; 1: off.
    cache_interval: int = field(default=1, metadata=bounded(*CACHE_INTERVAL_RANGE))


class RefineMode(enum.StrEnum):
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


@dataclass(frozen=True)
class Box:
    """A rectangle in fractions of the image size, origin top left."""

    left: float
    top: float
    right: float
    bottom: float


class TextPlacement(enum.StrEnum):
    """Which full-width band of the image overlay text is fitted into."""

    BOTTOM = "bottom"
    TOP = "top"
    CENTER = "center"


# The strength an unset `strength` takes by what the pass does (one source
# with the orchestrator's submit-time checks: stageflow.core.limits).
STRENGTH_IMG2IMG = limits.STRENGTH_IMG2IMG
STRENGTH_INPAINT = limits.STRENGTH_INPAINT
STRENGTH_TEXT = limits.STRENGTH_TEXT


@stage_params(StageKind.REFINE)
@dataclass(frozen=True)
class RefineParams:
    prompt: str
    negative_prompt: str = ""
    mode: RefineMode = RefineMode.IMG2IMG
    # None: by mode (STRENGTH_IMG2IMG, STRENGTH_INPAINT, STRENGTH_TEXT with text).
    strength: float = field(default=None, metadata=bounded(0.01, 1.0))  # type: ignore[assignment]
    steps: int = field(default=40, metadata=bounded(1, 200))
    guidance_scale: float = field(default=7.5, metadata=bounded(1.0, 30.0))
    seed: int = field(default=42, metadata=bounded(0, 2**63 - 1))
    # With a latents input (latent hand-off): where in the `steps` schedule to
    # resume, the base's denoising_end; no noise is added and `strength` is
    # unused (diffusers' denoising_start). 0: an image input, by `strength`.
    denoising_start: float = field(default=0.0, metadata=bounded(0.0, 0.99))
    inpaint_mask_blur: int = field(default=4, metadata=bounded(0, 64))
    mask_box: Box | None = None
    # Overlay text. When set, the stage runs the typography pass (stageflow.inference.text_pass)
    # instead of `mode`: the text is drawn exactly, inpainted at `strength` over its
    # own mask, and read back by OCR; `mask_box` and a mask input must be unset.
    text: str = ""
    text_placement: TextPlacement = TextPlacement.BOTTOM
    # A box for the text in fractions of the image; when set it replaces text_placement.
    text_box: Box | None = None
    # "#rrggbb" or a CSS name; empty picks black or white by contrast with the region.
    text_color: str = ""
    # Outline width as a fraction of the font size; 0 draws none.
    text_stroke: float = field(default=0.0, metadata=bounded(0.0, 0.2))
    text_shadow: bool = False
    # Accept a harmonised result when OCR's character error rate is at most this.
    # 0: overlay text must come out exact; a harmonised pass that changes even
    # one character is retried, then replaced by the exact render.
    max_cer: float = field(default=0.0, metadata=bounded(0.0, 1.0))
    # Harmonising passes (seed, seed + 1, ...) before falling back to the exact render.
    max_attempts: int = field(default=3, metadata=bounded(1, 10))
    # Step caching, as Txt2ImgParams.cache_interval; 1: off.
    cache_interval: int = field(default=1, metadata=bounded(*CACHE_INTERVAL_RANGE))

    def __post_init__(self) -> None:
        if self.strength is None:
            strength = limits.default_strength(
                text=bool(self.text), inpaint=self.mode == RefineMode.INPAINT
            )
            object.__setattr__(self, "strength", strength)


class UpscaleMode(enum.StrEnum):
    LEARNED = "learned"
    LANCZOS = "lanczos"


@stage_params(StageKind.UPSCALE)
@dataclass(frozen=True)
class UpscaleParams:
    mode: UpscaleMode = UpscaleMode.LEARNED
    tile_size: int = field(default=128, metadata=bounded(0, 1024))
    tile_overlap: int = field(default=24, metadata=bounded(0, 64))


StageParams = Txt2ImgParams | RefineParams | UpscaleParams


@dataclass(frozen=True)
class LatentSpace:
    """What makes latents from one model usable by another: the same family's
    UNet conditioning aside, the same VAE layout and scaling."""

    family: str  # "sd", "sdxl"
    channels: int
    vae_scale_factor: int
    scaling_factor: float

    @property
    def key(self) -> str:
        """One string for Describe (`latent_space`): equal keys, compatible latents."""
        return f"{self.family}/{self.channels}ch/{self.vae_scale_factor}x/{self.scaling_factor:g}"

    def describe(self) -> str:
        return (
            f"{self.family} latents ({self.channels} channels, 1/{self.vae_scale_factor} "
            f"of the image side, scaling {self.scaling_factor:g})"
        )


@dataclass(frozen=True)
class Latents:
    """A diffusion stage's partly denoised latents, passed to the next diffusion
    stage instead of an image (latent hand-off): float32 (1, C, H/f, W/f),
    already multiplied by the VAE's scaling factor, `denoising_end` of the way
    through a `steps`-step schedule. `array` is a numpy array."""

    array: Any
    space: LatentSpace
    denoising_end: float
    steps: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels of the image they decode to."""
        f = self.space.vae_scale_factor
        return int(self.array.shape[-1]) * f, int(self.array.shape[-2]) * f


@dataclass(frozen=True)
class StageInputs:
    """Decoded input artifacts; which are required depends on the stage kind."""

    image: Image.Image | None = None
    mask: Image.Image | None = None
    # Instead of an image: the previous diffusion stage's latents (latent hand-off).
    latents: Latents | None = None


@dataclass(frozen=True)
class TextCheck:
    """What OCR read back from the typography pass's output."""

    text: str  # the text asked for
    ocr_text: str  # what OCR read on the output image
    cer: float  # character error rate of ocr_text against text (after NFKC)
    exact: bool  # ocr_text equals text after normalisation
    attempts: int  # harmonising passes run
    fell_back: bool  # no pass met max_cer: the output is the exact, un-harmonised render
    attempt_cers: tuple[float, ...] = ()  # the CER of each harmonising pass, in order


@dataclass(frozen=True)
class StageOutput:
    """A stage call's image (or, for a latent hand-off, its latents) and what
    the stage found out while making it."""

    content: Image.Image | Latents
    text_check: TextCheck | None = None

    @property
    def image(self) -> Image.Image:
        if not isinstance(self.content, Image.Image):
            raise TypeError("this stage output is latents (a latent hand-off), not an image")
        return self.content

    @property
    def latents(self) -> Latents | None:
        return self.content if isinstance(self.content, Latents) else None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels of the image, or of the one the latents decode to."""
        return self.content.size


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    backend: str
    fingerprint: str
    # The precision its weights run in (stageflow.inference.precision).
    dtype: str = "fp32"
    # What the dtype setting asked for ("auto" or a dtype; "" where unknown) and
    # why `dtype` follows from it (stageflow.inference.precision.DtypeChoice).
    dtype_setting: str = ""
    dtype_reason: str = ""
    # The CPU's bf16-related flags and torch's dispatch level, where they bear
    # on the precision (the torch backend on CPU); empty elsewhere.
    cpu_features: tuple[str, ...] = ()
    cpu_capability: str = ""
    # The compile setting ("off", "inductor"; "" where unknown) and whether the
    # UNet and VAE run in channels_last (stageflow.inference.compiled). Not in
    # the fingerprint: they reorder float operations, as batching does.
    compile: str = ""
    channels_last: bool = False


@dataclass(frozen=True)
class ModelDescription:
    """What a loaded model accepts; served by Describe and used to validate."""

    kind: str
    identity: ModelIdentity
    min_side: int
    max_side: int
    size_multiple: int
    param_ranges: dict[str, tuple[float, float]]
    # Defaults this model gives unset parameters (model.yaml), over the
    # params dataclass defaults.
    param_defaults: Mapping[str, float] = field(default_factory=dict)
    # The prompt domain it declares (stageflow.inference.prompt_domain); empty: none.
    vocabulary: tuple[str, ...] = ()
    domain_description: str = ""
    # A diffusion model's LatentSpace.key (latent hand-off); "" for others.
    latent_space: str = ""


# progress(step_done_1_based, total_steps)
ProgressFn = Callable[[int, int], None]
# Returns True when the caller has gone away or the deadline has passed.
CancelledFn = Callable[[], bool]


def param_ranges(params_cls: type) -> dict[str, tuple[float, float]]:
    return {
        f.name: f.metadata["range"] for f in dataclasses.fields(params_cls) if "range" in f.metadata
    }


def check_ranges(params: StageParams) -> None:
    """Raise InvalidArgument naming the first numeric field out of its range."""
    for f in dataclasses.fields(params):
        if "range" not in f.metadata:
            continue
        lo, hi = f.metadata["range"]
        value = getattr(params, f.name)
        if not lo <= value <= hi:
            raise InvalidArgument(
                f.name, f"must be in [{_number(lo)}, {_number(hi)}], got {_number(value)}"
            )


def _number(value: float) -> str:
    """An integer in full (a seed's 9223372036854775807, never 9.22337e+18)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


MAX_PROMPT_CHARS = limits.MAX_PROMPT_CHARS


def check_prompts(params: StageParams) -> None:
    """Prompts must be non-empty (negative prompts may be empty) and bounded
    (stageflow.core.limits; the orchestrator applies the same rule)."""
    for name in ("prompt", "negative_prompt"):
        text = getattr(params, name, None)
        if text is None:
            continue
        problem = limits.prompt_problem(text, required=name == "prompt")
        if problem:
            raise InvalidArgument(name, problem)


def check_side(name: str, value: int, desc: ModelDescription) -> None:
    if not desc.min_side <= value <= desc.max_side:
        raise InvalidArgument(
            name, f"must be in [{desc.min_side}, {desc.max_side}] pixels, got {value}"
        )
    if value % desc.size_multiple:
        raise InvalidArgument(
            name, f"must be a multiple of {desc.size_multiple} pixels, got {value}"
        )


class StageModel(abc.ABC):
    """A model behind a stage. One class per model family + a registry entry.

    Lifecycle: construct (cheap) -> load() -> run()* -> unload(). `run` is
    called from a worker thread, at most `max_concurrency` at a time.
    """

    kind: ClassVar[str]
    params_type: ClassVar[type]

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights; after this `describe()` is valid."""

    @abc.abstractmethod
    def describe(self) -> ModelDescription: ...

    def validate(self, params: StageParams) -> None:
        """Raise InvalidArgument for the first bad field. Called before any work.

        The base checks the type and the numeric ranges; subclasses add their own
        checks (sizes, required text) after calling super.
        """
        if not isinstance(params, self.params_type):
            raise InvalidArgument(
                "params", f"this stage ({self.kind}) takes {self.params_type.__name__}"
            )
        check_ranges(params)
        check_prompts(params)

    def validate_inputs(self, params: StageParams, inputs: StageInputs) -> None:
        """Raise InvalidArgument for a missing input or a bad size, before
        running: input sizes, mask presence. Called on the inputs' headers
        (sizes and modes known, no pixel decoded yet) and may be called again
        on the decoded images."""
        return None

    @abc.abstractmethod
    def run(
        self,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        """Produce the output image. Check `cancelled()` between steps and raise
        stageflow.core.errors.Cancelled when it returns True."""

    def run_with_report(
        self,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> StageOutput:
        """`run`, plus what the call found out (the servicer calls this one).

        Models with nothing to report keep this default; a model that checks its
        own output (the refine stage's OCR) overrides it and lets `run` return
        just the image.
        """
        return StageOutput(self.run(params, inputs, progress, cancelled))

    def batch_key(self, params: StageParams) -> Hashable | None:
        """What requests must share to run as one batch (dynamic batching), or
        None when this model cannot batch them. Default: never batched."""
        return None

    def run_batch(
        self,
        params_list: Sequence[StageParams],
        inputs_list: Sequence[StageInputs],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> list[StageOutput]:
        """Run requests with equal `batch_key` as one model call; one output per
        request, in order. `progress` counts the batch's steps; `cancelled` is
        True once every request of the batch has gone. Only called when
        `batch_key` is not None."""
        raise NotImplementedError(f"{type(self).__name__} does not batch")

    def unload(self) -> None:
        """Release weights. Default: nothing to release."""
        return None
