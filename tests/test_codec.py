"""protos/codec.py: tensors cut into TensorChunk messages and checked back together."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import ps_pb2
from protos.codec import CHUNK_BYTES, MAX_MESSAGE_BYTES, Assembler, WireError, chunks


def _values(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _chunk(**fields) -> ps_pb2.TensorChunk:
    defaults = dict(name="dense", dtype="float32", shape=[8], offset=0, data=np.zeros(8, np.float32).tobytes(),
                    last=True)
    defaults.update(fields)
    return ps_pb2.TensorChunk(**defaults)


# ---- chunks --------------------------------------------------------------------------


def test_chunks_split_at_the_chunk_size_with_the_remainder_last():
    values = _values(10)
    out = list(chunks("dense", values, chunk_bytes=12))
    assert [c.offset for c in out] == [0, 3, 6, 9]
    assert [len(c.data) for c in out] == [12, 12, 12, 4]
    assert [c.last for c in out] == [False, False, False, True]
    assert all(c.name == "dense" and c.dtype == "float32" and list(c.shape) == [10] for c in out)
    assert b"".join(c.data for c in out) == values.astype("<f4").tobytes()


def test_chunks_carry_the_header_on_the_first_chunk_only():
    out = list(chunks("dense", _values(10), chunk_bytes=16, worker_id=3, clock=5, pulled_version=4,
                      num_samples=32, loss=0.25, version=9))
    first, rest = out[0], out[1:]
    assert (first.worker_id, first.clock, first.pulled_version, first.num_samples, first.loss, first.version) == (
        3, 5, 4, 32, 0.25, 9)
    assert rest and all((c.worker_id, c.clock, c.pulled_version, c.num_samples, c.loss, c.version) == (0, 0, 0, 0, 0, 0)
                        for c in rest)


def test_chunk_size_rounds_down_to_whole_values_and_never_below_one():
    assert [len(c.data) for c in chunks("dense", _values(5), chunk_bytes=10)] == [8, 8, 4]
    assert [len(c.data) for c in chunks("dense", _values(3), chunk_bytes=1)] == [4, 4, 4]


def test_a_tensor_that_fits_one_chunk_is_one_chunk_marked_last():
    (only,) = chunks("dense", _values(100))
    assert only.offset == 0 and only.last and len(only.data) == 400


def test_default_chunks_stay_under_the_message_limit():
    out = list(chunks("dense", np.zeros(CHUNK_BYTES // 4 + 1, np.float32)))
    assert [len(c.data) for c in out] == [CHUNK_BYTES, 4]
    assert max(c.ByteSize() for c in out) < MAX_MESSAGE_BYTES


def test_an_empty_tensor_is_one_empty_chunk_marked_last():
    (only,) = chunks("dense", np.zeros(0, np.float32), worker_id=1)
    assert (only.data, list(only.shape), only.offset, only.last, only.worker_id) == (b"", [0], 0, True, 1)
    assembler = Assembler("dense", 0)
    assert assembler.add(only) is True
    assert assembler.checked().shape == (0,)


# ---- Assembler -----------------------------------------------------------------------


def test_assembler_reassembles_the_exact_bits():
    values = _values(1001)
    values[:3] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max]  # subnormal, signed zero, extreme
    assembler = Assembler("dense", values.size)
    done = [assembler.add(c) for c in chunks("dense", values, chunk_bytes=400)]
    assert done == [False] * (len(done) - 1) + [True]
    assert assembler.checked().tobytes() == values.tobytes()


def test_assembler_writes_into_the_buffer_it_was_given():
    flat = np.full(30, 7.0, np.float32)
    values = _values(10)
    assembler = Assembler("dense", 10, flat[10:20])
    for c in chunks("dense", values, chunk_bytes=8):
        assembler.add(c)
    assert np.array_equal(flat[10:20], values)
    assert (flat[:10] == 7.0).all() and (flat[20:] == 7.0).all()


def test_assembler_reset_takes_a_second_tensor_into_the_same_buffer():
    assembler = Assembler("dense", 6)
    buffer = assembler.buffer
    for seed in (1, 2):
        assembler.reset()
        values = _values(6, seed)
        for c in chunks("dense", values, chunk_bytes=8):
            assembler.add(c)
        assert assembler.buffer is buffer
        assert np.array_equal(assembler.checked(), values)


BAD_CHUNKS = {
    "unknown_tensor": (_chunk(name="sparse"), grpc.StatusCode.NOT_FOUND, ["'sparse'", "'dense'"]),
    "dtype": (_chunk(dtype="float64"), grpc.StatusCode.INVALID_ARGUMENT, ["float32", "'float64'"]),
    "shape": (_chunk(shape=[2, 4]), grpc.StatusCode.INVALID_ARGUMENT, ["[8]", "[2, 4]"]),
    "offset": (_chunk(offset=4), grpc.StatusCode.INVALID_ARGUMENT, ["offset 0", "offset 4"]),
    "byte_length": (_chunk(data=b"\0" * 31), grpc.StatusCode.INVALID_ARGUMENT, ["31 bytes", "float32"]),
}


@pytest.mark.parametrize("reason", list(BAD_CHUNKS))
def test_assembler_refuses_a_bad_chunk_with_its_status_and_reason(reason):
    chunk, code, fragments = BAD_CHUNKS[reason]
    assembler = Assembler("dense", 8)
    assembler.buffer[:] = 3.0
    with pytest.raises(WireError) as caught:
        assembler.add(chunk)
    assert (caught.value.code, caught.value.reason) == (code, reason)
    for fragment in fragments:
        assert fragment in caught.value.message
    assert (assembler.buffer == 3.0).all()  # nothing copied before the check


def test_assembler_refuses_a_chunk_that_runs_past_the_shape():
    assembler = Assembler("dense", 8)
    with pytest.raises(WireError) as caught:
        assembler.add(_chunk(data=np.zeros(9, np.float32).tobytes()))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "byte_length")
    assert "element 9" in caught.value.message and "32 bytes expected" in caught.value.message


def test_assembler_refuses_a_last_chunk_that_leaves_the_tensor_short():
    assembler = Assembler("dense", 8)
    with pytest.raises(WireError) as caught:
        assembler.add(_chunk(data=np.zeros(7, np.float32).tobytes(), last=True))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "byte_length")
    assert "28 bytes received" in caught.value.message and "expected 32" in caught.value.message


def test_assembler_refuses_the_same_chunk_twice():
    assembler = Assembler("dense", 8)
    first = _chunk(data=np.zeros(4, np.float32).tobytes(), last=False)
    assert assembler.add(first) is False
    with pytest.raises(WireError) as caught:
        assembler.add(first)
    assert caught.value.reason == "offset"
    assert "expected a chunk at offset 4, got offset 0" in caught.value.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_checked_refuses_nan_and_inf(bad):
    values = np.ones(8, np.float32)
    values[5] = bad
    assembler = Assembler("dense", 8)
    assert assembler.add(_chunk(data=values.tobytes()))
    with pytest.raises(WireError) as caught:
        assembler.checked()
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "non_finite")
    assert "1 NaN or Inf values" in caught.value.message and "finite" in caught.value.message


def test_wire_error_defaults_to_the_malformed_reason():
    error = WireError(grpc.StatusCode.INVALID_ARGUMENT, "bad bytes")
    assert (error.reason, error.message, str(error)) == ("malformed", "bad bytes", "bad bytes")
