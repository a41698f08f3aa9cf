import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stageflow.v1 import common_pb2 as _common_pb2
from stageflow.v1 import stage_pb2 as _stage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_BULK: _ClassVar[Priority]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class StageState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_STATE_UNSPECIFIED: _ClassVar[StageState]
    STAGE_STATE_PENDING: _ClassVar[StageState]
    STAGE_STATE_RUNNING: _ClassVar[StageState]
    STAGE_STATE_SUCCEEDED: _ClassVar[StageState]
    STAGE_STATE_FAILED: _ClassVar[StageState]
    STAGE_STATE_CANCELLED: _ClassVar[StageState]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_BULK: Priority
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
STAGE_STATE_UNSPECIFIED: StageState
STAGE_STATE_PENDING: StageState
STAGE_STATE_RUNNING: StageState
STAGE_STATE_SUCCEEDED: StageState
STAGE_STATE_FAILED: StageState
STAGE_STATE_CANCELLED: StageState

class PromptBundle(_message.Message):
    __slots__ = ("base", "style", "overlay_text", "negative_prompt")
    BASE_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    base: str
    style: str
    overlay_text: str
    negative_prompt: str
    def __init__(self, base: _Optional[str] = ..., style: _Optional[str] = ..., overlay_text: _Optional[str] = ..., negative_prompt: _Optional[str] = ...) -> None: ...

class BaseOptions(_message.Message):
    __slots__ = ("steps", "guidance_scale", "denoising_end", "cache_interval")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    DENOISING_END_FIELD_NUMBER: _ClassVar[int]
    CACHE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    steps: int
    guidance_scale: float
    denoising_end: float
    cache_interval: int
    def __init__(self, steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., denoising_end: _Optional[float] = ..., cache_interval: _Optional[int] = ...) -> None: ...

class RefineOptions(_message.Message):
    __slots__ = ("mode", "strength", "steps", "guidance_scale", "seed", "inpaint_mask_blur", "mask_box", "text_placement", "text_color", "text_stroke", "text_shadow", "max_cer", "max_attempts", "denoising_start", "cache_interval")
    MODE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPAINT_MASK_BLUR_FIELD_NUMBER: _ClassVar[int]
    MASK_BOX_FIELD_NUMBER: _ClassVar[int]
    TEXT_PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_COLOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_STROKE_FIELD_NUMBER: _ClassVar[int]
    TEXT_SHADOW_FIELD_NUMBER: _ClassVar[int]
    MAX_CER_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DENOISING_START_FIELD_NUMBER: _ClassVar[int]
    CACHE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    mode: _stage_pb2.RefineMode
    strength: float
    steps: int
    guidance_scale: float
    seed: int
    inpaint_mask_blur: int
    mask_box: _stage_pb2.Box
    text_placement: _stage_pb2.TextPlacement
    text_color: str
    text_stroke: float
    text_shadow: bool
    max_cer: float
    max_attempts: int
    denoising_start: float
    cache_interval: int
    def __init__(self, mode: _Optional[_Union[_stage_pb2.RefineMode, str]] = ..., strength: _Optional[float] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., inpaint_mask_blur: _Optional[int] = ..., mask_box: _Optional[_Union[_stage_pb2.Box, _Mapping]] = ..., text_placement: _Optional[_Union[_stage_pb2.TextPlacement, str]] = ..., text_color: _Optional[str] = ..., text_stroke: _Optional[float] = ..., text_shadow: _Optional[bool] = ..., max_cer: _Optional[float] = ..., max_attempts: _Optional[int] = ..., denoising_start: _Optional[float] = ..., cache_interval: _Optional[int] = ...) -> None: ...

class UpscaleOptions(_message.Message):
    __slots__ = ("mode", "tile_size", "tile_overlap")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    mode: _stage_pb2.UpscaleMode
    tile_size: int
    tile_overlap: int
    def __init__(self, mode: _Optional[_Union[_stage_pb2.UpscaleMode, str]] = ..., tile_size: _Optional[int] = ..., tile_overlap: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("bundle", "seed", "width", "height", "base", "refine", "upscale", "request_id", "stages", "pipeline", "priority", "deadline_seconds", "options", "validate_only", "input_image")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Struct
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    INPUT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    bundle: PromptBundle
    seed: int
    width: int
    height: int
    base: BaseOptions
    refine: RefineOptions
    upscale: UpscaleOptions
    request_id: str
    stages: _containers.RepeatedScalarFieldContainer[str]
    pipeline: str
    priority: Priority
    deadline_seconds: float
    options: _containers.MessageMap[str, _struct_pb2.Struct]
    validate_only: bool
    input_image: str
    def __init__(self, bundle: _Optional[_Union[PromptBundle, _Mapping]] = ..., seed: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., base: _Optional[_Union[BaseOptions, _Mapping]] = ..., refine: _Optional[_Union[RefineOptions, _Mapping]] = ..., upscale: _Optional[_Union[UpscaleOptions, _Mapping]] = ..., request_id: _Optional[str] = ..., stages: _Optional[_Iterable[str]] = ..., pipeline: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ..., deadline_seconds: _Optional[float] = ..., options: _Optional[_Mapping[str, _struct_pb2.Struct]] = ..., validate_only: _Optional[bool] = ..., input_image: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class StageRun(_message.Message):
    __slots__ = ("stage", "state", "output", "model", "timing", "step", "total_steps", "error", "request", "text_check", "cache_hit", "cache_key", "service", "route", "attempts", "warnings")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TEXT_CHECK_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    state: StageState
    output: _common_pb2.ArtifactRef
    model: _common_pb2.ModelInfo
    timing: _common_pb2.Timing
    step: int
    total_steps: int
    error: str
    request: _stage_pb2.RunRequest
    text_check: _stage_pb2.TextCheck
    cache_hit: bool
    cache_key: str
    service: str
    route: str
    attempts: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, stage: _Optional[str] = ..., state: _Optional[_Union[StageState, str]] = ..., output: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., error: _Optional[str] = ..., request: _Optional[_Union[_stage_pb2.RunRequest, _Mapping]] = ..., text_check: _Optional[_Union[_stage_pb2.TextCheck, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., cache_key: _Optional[str] = ..., service: _Optional[str] = ..., route: _Optional[str] = ..., attempts: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "bundle", "prompt", "seed", "width", "height", "stages", "final", "final_url", "error", "created_at", "updated_at", "request", "pipeline", "pipeline_sha256", "version", "rerun_from", "tenant", "queue_position")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    FINAL_URL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RERUN_FROM_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    bundle: PromptBundle
    prompt: str
    seed: int
    width: int
    height: int
    stages: _containers.RepeatedCompositeFieldContainer[StageRun]
    final: _common_pb2.ArtifactRef
    final_url: str
    error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    request: SubmitJobRequest
    pipeline: str
    pipeline_sha256: str
    version: int
    rerun_from: str
    tenant: str
    queue_position: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., bundle: _Optional[_Union[PromptBundle, _Mapping]] = ..., prompt: _Optional[str] = ..., seed: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[StageRun, _Mapping]]] = ..., final: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., final_url: _Optional[str] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request: _Optional[_Union[SubmitJobRequest, _Mapping]] = ..., pipeline: _Optional[str] = ..., pipeline_sha256: _Optional[str] = ..., version: _Optional[int] = ..., rerun_from: _Optional[str] = ..., tenant: _Optional[str] = ..., queue_position: _Optional[int] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StageStarted(_message.Message):
    __slots__ = ("stage",)
    STAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    def __init__(self, stage: _Optional[str] = ...) -> None: ...

class StageProgress(_message.Message):
    __slots__ = ("stage", "step", "total_steps")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    step: int
    total_steps: int
    def __init__(self, stage: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ...) -> None: ...

class StageFinished(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: StageRun
    def __init__(self, run: _Optional[_Union[StageRun, _Mapping]] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job_id", "snapshot", "stage_started", "stage_progress", "stage_finished", "finished")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STAGE_STARTED_FIELD_NUMBER: _ClassVar[int]
    STAGE_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    snapshot: Job
    stage_started: StageStarted
    stage_progress: StageProgress
    stage_finished: StageFinished
    finished: Job
    def __init__(self, job_id: _Optional[str] = ..., snapshot: _Optional[_Union[Job, _Mapping]] = ..., stage_started: _Optional[_Union[StageStarted, _Mapping]] = ..., stage_progress: _Optional[_Union[StageProgress, _Mapping]] = ..., stage_finished: _Optional[_Union[StageFinished, _Mapping]] = ..., finished: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job", "versions")
    JOB_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    job: Job
    versions: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "state", "page_token", "query")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    state: JobState
    page_token: str
    query: str
    def __init__(self, page_size: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., page_token: _Optional[str] = ..., query: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class BundleOverrides(_message.Message):
    __slots__ = ("base", "style", "overlay_text", "negative_prompt")
    BASE_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    base: str
    style: str
    overlay_text: str
    negative_prompt: str
    def __init__(self, base: _Optional[str] = ..., style: _Optional[str] = ..., overlay_text: _Optional[str] = ..., negative_prompt: _Optional[str] = ...) -> None: ...

class RerunJobRequest(_message.Message):
    __slots__ = ("job_id", "from_stage", "base", "refine", "upscale", "bundle", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Struct
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STAGE_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_stage: str
    base: BaseOptions
    refine: RefineOptions
    upscale: UpscaleOptions
    bundle: BundleOverrides
    options: _containers.MessageMap[str, _struct_pb2.Struct]
    def __init__(self, job_id: _Optional[str] = ..., from_stage: _Optional[str] = ..., base: _Optional[_Union[BaseOptions, _Mapping]] = ..., refine: _Optional[_Union[RefineOptions, _Mapping]] = ..., upscale: _Optional[_Union[UpscaleOptions, _Mapping]] = ..., bundle: _Optional[_Union[BundleOverrides, _Mapping]] = ..., options: _Optional[_Mapping[str, _struct_pb2.Struct]] = ...) -> None: ...

class RerunJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("job_id", "version", "stage", "key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    stage: str
    key: str
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., stage: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetArtifactResponse(_message.Message):
    __slots__ = ("artifact", "data")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.ArtifactRef
    data: bytes
    def __init__(self, artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListPipelinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PipelineInfo(_message.Message):
    __slots__ = ("name", "stages", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    stages: _containers.RepeatedScalarFieldContainer[str]
    sha256: str
    def __init__(self, name: _Optional[str] = ..., stages: _Optional[_Iterable[str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListPipelinesResponse(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineInfo]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[PipelineInfo, _Mapping]]] = ...) -> None: ...

class UploadImageRequest(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class UploadImageResponse(_message.Message):
    __slots__ = ("upload_id", "image", "width", "height", "format")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    image: _common_pb2.ArtifactRef
    width: int
    height: int
    format: str
    def __init__(self, upload_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class ShareArtifactRequest(_message.Message):
    __slots__ = ("job_id", "version", "expires_in_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    expires_in_seconds: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., expires_in_seconds: _Optional[int] = ...) -> None: ...

class ShareArtifactResponse(_message.Message):
    __slots__ = ("token", "expires_at", "version")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class GetSharedArtifactRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class GetSharedArtifactResponse(_message.Message):
    __slots__ = ("artifact", "data", "job")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.ArtifactRef
    data: bytes
    job: Job
    def __init__(self, artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., data: _Optional[bytes] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...
