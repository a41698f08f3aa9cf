from google.protobuf import struct_pb2 as _struct_pb2
from stageflow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RefineMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFINE_MODE_UNSPECIFIED: _ClassVar[RefineMode]
    REFINE_MODE_IMG2IMG: _ClassVar[RefineMode]
    REFINE_MODE_INPAINT: _ClassVar[RefineMode]

class TextPlacement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_PLACEMENT_UNSPECIFIED: _ClassVar[TextPlacement]
    TEXT_PLACEMENT_BOTTOM: _ClassVar[TextPlacement]
    TEXT_PLACEMENT_TOP: _ClassVar[TextPlacement]
    TEXT_PLACEMENT_CENTER: _ClassVar[TextPlacement]

class UpscaleMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPSCALE_MODE_UNSPECIFIED: _ClassVar[UpscaleMode]
    UPSCALE_MODE_LEARNED: _ClassVar[UpscaleMode]
    UPSCALE_MODE_LANCZOS: _ClassVar[UpscaleMode]
REFINE_MODE_UNSPECIFIED: RefineMode
REFINE_MODE_IMG2IMG: RefineMode
REFINE_MODE_INPAINT: RefineMode
TEXT_PLACEMENT_UNSPECIFIED: TextPlacement
TEXT_PLACEMENT_BOTTOM: TextPlacement
TEXT_PLACEMENT_TOP: TextPlacement
TEXT_PLACEMENT_CENTER: TextPlacement
UPSCALE_MODE_UNSPECIFIED: UpscaleMode
UPSCALE_MODE_LEARNED: UpscaleMode
UPSCALE_MODE_LANCZOS: UpscaleMode

class Txt2ImgParams(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "denoising_end", "cache_interval")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DENOISING_END_FIELD_NUMBER: _ClassVar[int]
    CACHE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    denoising_end: float
    cache_interval: int
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., denoising_end: _Optional[float] = ..., cache_interval: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: float
    top: float
    right: float
    bottom: float
    def __init__(self, left: _Optional[float] = ..., top: _Optional[float] = ..., right: _Optional[float] = ..., bottom: _Optional[float] = ...) -> None: ...

class RefineParams(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "mode", "strength", "steps", "guidance_scale", "seed", "inpaint_mask_blur", "mask_box", "text", "text_placement", "text_box", "text_color", "text_stroke", "text_shadow", "max_cer", "max_attempts", "denoising_start", "cache_interval")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPAINT_MASK_BLUR_FIELD_NUMBER: _ClassVar[int]
    MASK_BOX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_BOX_FIELD_NUMBER: _ClassVar[int]
    TEXT_COLOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_STROKE_FIELD_NUMBER: _ClassVar[int]
    TEXT_SHADOW_FIELD_NUMBER: _ClassVar[int]
    MAX_CER_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DENOISING_START_FIELD_NUMBER: _ClassVar[int]
    CACHE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    mode: RefineMode
    strength: float
    steps: int
    guidance_scale: float
    seed: int
    inpaint_mask_blur: int
    mask_box: Box
    text: str
    text_placement: TextPlacement
    text_box: Box
    text_color: str
    text_stroke: float
    text_shadow: bool
    max_cer: float
    max_attempts: int
    denoising_start: float
    cache_interval: int
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., mode: _Optional[_Union[RefineMode, str]] = ..., strength: _Optional[float] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., inpaint_mask_blur: _Optional[int] = ..., mask_box: _Optional[_Union[Box, _Mapping]] = ..., text: _Optional[str] = ..., text_placement: _Optional[_Union[TextPlacement, str]] = ..., text_box: _Optional[_Union[Box, _Mapping]] = ..., text_color: _Optional[str] = ..., text_stroke: _Optional[float] = ..., text_shadow: _Optional[bool] = ..., max_cer: _Optional[float] = ..., max_attempts: _Optional[int] = ..., denoising_start: _Optional[float] = ..., cache_interval: _Optional[int] = ...) -> None: ...

class UpscaleParams(_message.Message):
    __slots__ = ("mode", "tile_size", "tile_overlap")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    mode: UpscaleMode
    tile_size: int
    tile_overlap: int
    def __init__(self, mode: _Optional[_Union[UpscaleMode, str]] = ..., tile_size: _Optional[int] = ..., tile_overlap: _Optional[int] = ...) -> None: ...

class GenericParams(_message.Message):
    __slots__ = ("kind", "values")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    values: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., values: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("request_id", "job_id", "image", "mask", "output_prefix", "latents", "txt2img", "refine", "upscale", "generic")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    TXT2IMG_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    GENERIC_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    job_id: str
    image: _common_pb2.ArtifactRef
    mask: _common_pb2.ArtifactRef
    output_prefix: str
    latents: _common_pb2.ArtifactRef
    txt2img: Txt2ImgParams
    refine: RefineParams
    upscale: UpscaleParams
    generic: GenericParams
    def __init__(self, request_id: _Optional[str] = ..., job_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., mask: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., output_prefix: _Optional[str] = ..., latents: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., txt2img: _Optional[_Union[Txt2ImgParams, _Mapping]] = ..., refine: _Optional[_Union[RefineParams, _Mapping]] = ..., upscale: _Optional[_Union[UpscaleParams, _Mapping]] = ..., generic: _Optional[_Union[GenericParams, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "elapsed_ms")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    elapsed_ms: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class TextCheck(_message.Message):
    __slots__ = ("text", "ocr_text", "cer", "exact", "attempts", "fell_back", "attempt_cers")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OCR_TEXT_FIELD_NUMBER: _ClassVar[int]
    CER_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FELL_BACK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_CERS_FIELD_NUMBER: _ClassVar[int]
    text: str
    ocr_text: str
    cer: float
    exact: bool
    attempts: int
    fell_back: bool
    attempt_cers: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, text: _Optional[str] = ..., ocr_text: _Optional[str] = ..., cer: _Optional[float] = ..., exact: _Optional[bool] = ..., attempts: _Optional[int] = ..., fell_back: _Optional[bool] = ..., attempt_cers: _Optional[_Iterable[float]] = ...) -> None: ...

class StageResult(_message.Message):
    __slots__ = ("output", "model", "timing", "width", "height", "text_check", "warnings")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TEXT_CHECK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    output: _common_pb2.ArtifactRef
    model: _common_pb2.ModelInfo
    timing: _common_pb2.Timing
    width: int
    height: int
    text_check: TextCheck
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, output: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., text_check: _Optional[_Union[TextCheck, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: StageResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[StageResult, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParamRange(_message.Message):
    __slots__ = ("name", "min", "max")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    name: str
    min: float
    max: float
    def __init__(self, name: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("kind", "model", "min_side", "max_side", "size_multiple", "params", "ready", "max_concurrency", "max_queue", "defaults", "vocabulary", "domain_description", "latent_space", "cpu_features", "cpu_capability")
    class DefaultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MIN_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    SIZE_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CPU_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    model: _common_pb2.ModelInfo
    min_side: int
    max_side: int
    size_multiple: int
    params: _containers.RepeatedCompositeFieldContainer[ParamRange]
    ready: bool
    max_concurrency: int
    max_queue: int
    defaults: _containers.ScalarMap[str, float]
    vocabulary: _containers.RepeatedScalarFieldContainer[str]
    domain_description: str
    latent_space: str
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    cpu_capability: str
    def __init__(self, kind: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., min_side: _Optional[int] = ..., max_side: _Optional[int] = ..., size_multiple: _Optional[int] = ..., params: _Optional[_Iterable[_Union[ParamRange, _Mapping]]] = ..., ready: _Optional[bool] = ..., max_concurrency: _Optional[int] = ..., max_queue: _Optional[int] = ..., defaults: _Optional[_Mapping[str, float]] = ..., vocabulary: _Optional[_Iterable[str]] = ..., domain_description: _Optional[str] = ..., latent_space: _Optional[str] = ..., cpu_features: _Optional[_Iterable[str]] = ..., cpu_capability: _Optional[str] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
