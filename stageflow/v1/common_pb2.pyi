from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactRef(_message.Message):
    __slots__ = ("key", "sha256", "size_bytes", "media_type")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    sha256: str
    size_bytes: int
    media_type: str
    def __init__(self, key: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "backend", "fingerprint", "dtype", "dtype_setting", "dtype_reason", "compile", "channels_last")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_SETTING_FIELD_NUMBER: _ClassVar[int]
    DTYPE_REASON_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_LAST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    backend: str
    fingerprint: str
    dtype: str
    dtype_setting: str
    dtype_reason: str
    compile: str
    channels_last: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., backend: _Optional[str] = ..., fingerprint: _Optional[str] = ..., dtype: _Optional[str] = ..., dtype_setting: _Optional[str] = ..., dtype_reason: _Optional[str] = ..., compile: _Optional[str] = ..., channels_last: _Optional[bool] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "load_inputs_ms", "compute_ms", "store_output_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_INPUTS_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    STORE_OUTPUT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    load_inputs_ms: float
    compute_ms: float
    store_output_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., load_inputs_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., store_output_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...
