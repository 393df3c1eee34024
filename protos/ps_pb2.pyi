from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("worker_id", "incarnation")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    incarnation: int
    def __init__(self, worker_id: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("shard_id", "tensors", "version", "protocol", "chunk_bytes", "clock", "seq")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    version: int
    protocol: int
    chunk_bytes: int
    clock: int
    seq: int
    def __init__(self, shard_id: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., version: _Optional[int] = ..., protocol: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., clock: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data", "last", "worker_id", "clock", "pulled_version", "num_samples", "loss", "version", "push", "buffers_follow", "ahead", "incarnation", "seq")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    PULLED_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FOLLOW_FIELD_NUMBER: _ClassVar[int]
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    last: bool
    worker_id: int
    clock: int
    pulled_version: int
    num_samples: int
    loss: float
    version: int
    push: PushReply
    buffers_follow: bool
    ahead: int
    incarnation: int
    seq: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., worker_id: _Optional[int] = ..., clock: _Optional[int] = ..., pulled_version: _Optional[int] = ..., num_samples: _Optional[int] = ..., loss: _Optional[float] = ..., version: _Optional[int] = ..., push: _Optional[_Union[PushReply, _Mapping]] = ..., buffers_follow: _Optional[bool] = ..., ahead: _Optional[int] = ..., incarnation: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("outcome", "version")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        APPLIED: _ClassVar[PushReply.Outcome]
        DUPLICATE: _ClassVar[PushReply.Outcome]
        STALE: _ClassVar[PushReply.Outcome]
    APPLIED: PushReply.Outcome
    DUPLICATE: PushReply.Outcome
    STALE: PushReply.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    outcome: PushReply.Outcome
    version: int
    def __init__(self, outcome: _Optional[_Union[PushReply.Outcome, str]] = ..., version: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("worker_id", "clock")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    clock: int
    def __init__(self, worker_id: _Optional[int] = ..., clock: _Optional[int] = ...) -> None: ...

class ClockRequest(_message.Message):
    __slots__ = ("worker_id", "clock", "leave", "incarnation")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    clock: int
    leave: bool
    incarnation: int
    def __init__(self, worker_id: _Optional[int] = ..., clock: _Optional[int] = ..., leave: _Optional[bool] = ..., incarnation: _Optional[int] = ...) -> None: ...

class ClockReply(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("msgpack",)
    MSGPACK_FIELD_NUMBER: _ClassVar[int]
    msgpack: bytes
    def __init__(self, msgpack: _Optional[bytes] = ...) -> None: ...

class SparsePullRequest(_message.Message):
    __slots__ = ("worker_id", "incarnation", "table", "clock", "ids")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    incarnation: int
    table: str
    clock: int
    ids: bytes
    def __init__(self, worker_id: _Optional[int] = ..., incarnation: _Optional[int] = ..., table: _Optional[str] = ..., clock: _Optional[int] = ..., ids: _Optional[bytes] = ...) -> None: ...

class SparseRows(_message.Message):
    __slots__ = ("dim", "count", "rows", "version")
    DIM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    dim: int
    count: int
    rows: bytes
    version: int
    def __init__(self, dim: _Optional[int] = ..., count: _Optional[int] = ..., rows: _Optional[bytes] = ..., version: _Optional[int] = ...) -> None: ...

class SparsePushRequest(_message.Message):
    __slots__ = ("worker_id", "incarnation", "table", "clock", "ids", "grads", "dim", "num_samples", "codec")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    incarnation: int
    table: str
    clock: int
    ids: bytes
    grads: bytes
    dim: int
    num_samples: int
    codec: str
    def __init__(self, worker_id: _Optional[int] = ..., incarnation: _Optional[int] = ..., table: _Optional[str] = ..., clock: _Optional[int] = ..., ids: _Optional[bytes] = ..., grads: _Optional[bytes] = ..., dim: _Optional[int] = ..., num_samples: _Optional[int] = ..., codec: _Optional[str] = ...) -> None: ...
