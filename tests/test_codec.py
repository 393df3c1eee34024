"""protos/codec.py: tensors cut into TensorChunk messages and checked back together."""

from __future__ import annotations

import warnings

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError

from rayps.protos import ps_pb2
from rayps.protos.codec import (CHUNK_BYTES, MAX_MESSAGE_BYTES, Assembler, ReceivedChunk, WireError, chunks, encode_chunks,
                          parse_chunk)
from rayps.protos.layout import all_finite


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
    assert assembler.buffer.shape == (0,)


# ---- Assembler -----------------------------------------------------------------------


def test_assembler_reassembles_the_exact_bits():
    values = _values(1001)
    values[:3] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max]  # subnormal, signed zero, extreme
    assembler = Assembler("dense", values.size)
    done = [assembler.add(c) for c in chunks("dense", values, chunk_bytes=400)]
    assert done == [False] * (len(done) - 1) + [True]
    assert assembler.buffer.tobytes() == values.tobytes()


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
        assert np.array_equal(assembler.buffer, values)


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


def test_wire_error_defaults_to_the_malformed_reason():
    error = WireError(grpc.StatusCode.INVALID_ARGUMENT, "bad bytes")
    assert (error.reason, error.message, str(error)) == ("malformed", "bad bytes", "bad bytes")


# ---- encode_chunks: the same messages as chunks, payload copied once ----------------

HEADER = dict(worker_id=3, clock=5, pulled_version=4, num_samples=32, loss=0.25, version=9,
              push=ps_pb2.PushReply(outcome=ps_pb2.PushReply.DUPLICATE, version=9))


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 10, 1000, 1001])
@pytest.mark.parametrize("chunk_bytes", [1, 10, 12, 16, 4000, CHUNK_BYTES])
@pytest.mark.parametrize("header", [{}, HEADER], ids=["no_header", "header"])
def test_encode_chunks_decode_to_exactly_the_messages_chunks_makes(n, chunk_bytes, header):
    values = _values(n, seed=n)
    encoded = list(encode_chunks("dense", values, chunk_bytes, **header))
    expected = list(chunks("dense", values, chunk_bytes, **header))
    assert all(isinstance(b, bytes) for b in encoded)
    assert [ps_pb2.TensorChunk.FromString(b) for b in encoded] == expected
    assert [len(b) for b in encoded] == [m.ByteSize() for m in expected]


@pytest.mark.parametrize("values", [
    np.arange(10, dtype=np.float64) / 3,  # cast to float32 on the way
    np.arange(20, dtype=np.float32)[::2],  # a strided view
    np.arange(10, dtype=np.float32).reshape(2, 5),  # sent flat
    np.array([np.float32(1e-45), -0.0, np.finfo(np.float32).max, np.nan, -np.inf], np.float32),
], ids=["float64", "strided", "2d", "special_values"])
def test_encode_chunks_match_chunks_for_any_array_chunks_accepts(values):
    encoded = [ps_pb2.TensorChunk.FromString(b) for b in encode_chunks("dense", values, 12, clock=1)]
    expected = list(chunks("dense", values, 12, clock=1))
    # compared as bytes: NaN != NaN would fail a message comparison
    assert [m.SerializeToString(deterministic=True) for m in encoded] == [
        m.SerializeToString(deterministic=True) for m in expected]


def test_encoded_chunks_are_a_snapshot_of_the_tensor():
    values = _values(10)
    before = values.copy()
    encoded = list(encode_chunks("dense", values, 16))
    values[:] = 7.0
    assert b"".join(ps_pb2.TensorChunk.FromString(b).data for b in encoded) == before.tobytes()


# ---- parse_chunk: FromString without copying the payload ------------------------------

FIELDS = [f.name for f in ps_pb2.TensorChunk.DESCRIPTOR.fields]


def _fields(message) -> dict:
    """Every field as a user reads it; ``data`` as bytes (a ReceivedChunk holds a view)."""
    out = {name: getattr(message, name) for name in FIELDS}
    out["data"] = bytes(out["data"])
    out["shape"] = list(out["shape"])
    out["has_push"] = message.HasField("push")
    return out


def _outcome(parse, message: bytes):
    try:
        return "ok", _fields(parse(message))
    except Exception as e:  # the kind and the words, compared between the two parsers
        return type(e), str(e)


def _good_messages() -> list[tuple[bytes, bool | None]]:
    """Messages FromString reads, each with whether parse_chunk must hand out its payload as a view (None: either)."""
    values = _values(8)
    data = values.tobytes()
    known = ps_pb2.TensorChunk(name="dense", last=True).SerializeToString()
    # fields protobuf does not know (kept as unknown fields by both): varint, fixed64, fixed32, bytes
    unknown = b"\xf8\x01\x96\x01" + b"\x81\x02" + bytes(range(8)) + b"\x8d\x02" + bytes(4) + b"\x92\x02\x03abc"
    group = b"\x9b\x02\xa0\x02\x01\x9c\x02"  # an unknown group: not plainly laid out, left to protobuf
    out = [(m, True) for m in encode_chunks("dense", values, 12, **HEADER)]  # header first, middle and last chunks
    out += [(m.SerializeToString(), True) for m in chunks("dense", values, 16, clock=2)]  # protobuf's field order
    out += [
        (next(encode_chunks("dense", np.zeros(0, np.float32), worker_id=1)), None),  # no data field at all
        (b"\x2a" + bytes([len(data)]) + data + known, True),  # data first
        (known + unknown + b"\x2a" + bytes([len(data)]) + data, True),
        (known + group + b"\x2a" + bytes([len(data)]) + data, None),
        (known + b"\x28\x07" + b"\x2a\x04" + data[:4], None),  # a field 5 of the wrong wire type, then data
        (b"\x2a\x04" + data[:4] + known + b"\x2a\x04" + data[4:8], None),  # data twice: the last one counts
    ]
    return out


def _mutations(message: bytes, rng: np.random.Generator) -> list[bytes]:
    out = [message[:k] for k in range(len(message))]  # every truncation
    for k in range(0, len(message), 3):  # flipped bits: continuation, low bit, whole byte
        for mask in (0x80, 0x01, 0xFF):
            out.append(message[:k] + bytes([message[k] ^ mask]) + message[k + 1:])
    for _ in range(10):  # a random byte set to a random value, and random bytes spliced in
        k = int(rng.integers(len(message)))
        out.append(message[:k] + bytes([int(rng.integers(256))]) + message[k + 1:])
        out.append(message[:k] + rng.bytes(int(rng.integers(1, 6))) + message[k:])
    return out


def test_parse_chunk_reads_good_messages_as_from_string_does():
    for message, view in _good_messages():
        parsed = parse_chunk(message)
        assert _fields(parsed) == _fields(ps_pb2.TensorChunk.FromString(message)), message
        if view:  # the fast path's point: the payload stays in the received bytes
            assert isinstance(parsed, ReceivedChunk) and parsed.data.obj is message, message


def test_parse_chunk_fails_or_succeeds_exactly_as_from_string_on_mutated_bytes():
    rng = np.random.default_rng(20240607)
    cases = [m for good, _ in _good_messages() for m in _mutations(good, rng)]
    cases += [rng.bytes(int(rng.integers(0, 80))) for _ in range(200)]  # random garbage
    cases += [b"", b"\x00", b"\x2a", b"\x2a\x05abc", b"\x2a\x00\x2a\x00", b"\x2d\x00\x00\x00\x00", b"\xff" * 11]
    kinds = {"ok": 0, "error": 0}
    for message in cases:
        expected = _outcome(ps_pb2.TensorChunk.FromString, message)
        assert _outcome(parse_chunk, message) == expected, message
        kinds["ok" if expected[0] == "ok" else "error"] += 1
    assert len(cases) > 500 and kinds["ok"] > 50 and kinds["error"] > 50  # both kinds of case were exercised
    assert _outcome(ps_pb2.TensorChunk.FromString, b"\xff" * 11)[0] is DecodeError


@pytest.mark.parametrize("where", ["key", "length"])
def test_parse_chunk_refuses_an_overlong_data_varint_as_from_string_does(where):
    data = np.ones(2, np.float32).tobytes()
    key, length = (b"\xaa\x80\x80\x80\x80\x00", b"\x08") if where == "key" else (b"\x2a", b"\x88\x80\x80\x80\x80\x00")
    message = ps_pb2.TensorChunk(name="dense", shape=[2], last=True).SerializeToString() + key + length + data
    assert _outcome(ps_pb2.TensorChunk.FromString, message)[0] is DecodeError
    assert _outcome(parse_chunk, message) == _outcome(ps_pb2.TensorChunk.FromString, message)


# ---- layout.all_finite ------------------------------------------------------------------

BIG = (1 << 16) + 7  # past the size where all_finite takes its sum-of-squares path, with a ragged tail
F32 = np.finfo(np.float32)


def _with(n: int, **at) -> np.ndarray:
    values = _values(n, seed=n)
    for where, value in at.items():
        values[{"first": 0, "last": n - 1, "middle": n // 2}[where]] = value
    return values


ALL_FINITE_CASES = {
    "empty": lambda n: np.zeros(0, np.float32),
    "plain": lambda n: _values(n),
    "nan_first": lambda n: _with(n, first=np.nan),
    "nan_middle": lambda n: _with(n, middle=np.nan),
    "nan_last": lambda n: _with(n, last=np.nan),
    "inf": lambda n: _with(n, middle=np.inf),
    "minus_inf_last": lambda n: _with(n, last=-np.inf),
    "both_infs": lambda n: _with(n, first=np.inf, last=-np.inf),
    "nan_and_inf": lambda n: _with(n, first=np.nan, last=np.inf),
    "max_finite": lambda n: _with(n, middle=F32.max, last=-F32.max),  # its square overflows float32
    "all_huge": lambda n: np.full(n, 1e30, np.float32),  # every square overflows
    "huge_partial_sums": lambda n: np.full(n, 1e19, np.float32),  # squares fit, their sum does not
    "huge_and_nan": lambda n: _with(n, first=F32.max, last=np.nan),
    "subnormals": lambda n: np.full(n, 1e-45, np.float32),  # squares underflow to zero
    "negative_zero": lambda n: np.full(n, -0.0, np.float32),
    "all_nan": lambda n: np.full(n, np.nan, np.float32),
}


@pytest.mark.parametrize("n", [1, (1 << 16) - 1, 1 << 16, BIG], ids=["one", "below_fast_path", "at_fast_path", "big"])
@pytest.mark.parametrize("case", list(ALL_FINITE_CASES))
def test_all_finite_agrees_with_isfinite(case, n):
    values = ALL_FINITE_CASES[case](n)
    with warnings.catch_warnings():  # and it warns about nothing (numpy's default error settings)
        warnings.simplefilter("error")
        got = all_finite(values)
    assert got is bool(np.isfinite(values).all())


@pytest.mark.parametrize("position", [0, 1, 3, 7, 8, 15, 16, 31, BIG // 2, BIG - 8, BIG - 2, BIG - 1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value_at_any_position(position, bad):
    values = np.ones(BIG, np.float32)  # any lane of a vectorised sum, and the tail after the last full vector
    values[position] = bad
    assert all_finite(values) is False
