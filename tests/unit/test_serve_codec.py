"""The KServe v2 codec against itself and against tritonclient's own framing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eclip_ray.actor.spec import DATATYPES
from eclip_ray.serve._private import codec
from eclip_ray.serve._private.codec import RequestedOutput
from eclip_ray.serve._private.errors import RequestError

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.http._utils import _get_inference_request  # noqa: E402

DTYPES = list(DATATYPES.values())


def arrays(allow_nan: bool = True):
    def one(dtype: np.dtype):
        elements = None
        if dtype.kind == "f":
            elements = st.floats(
                width=8 * dtype.itemsize, allow_nan=allow_nan, allow_infinity=allow_nan, allow_subnormal=False
            )
        return hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5), elements=elements)

    return st.sampled_from(DTYPES).flatmap(one)


def named(allow_nan: bool = True):
    return st.lists(arrays(allow_nan), min_size=1, max_size=4).map(lambda xs: [(f"t{i}", x) for i, x in enumerate(xs)])


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(tensors=named(allow_nan=True))
def test_binary_request_round_trip(tensors):
    body, json_length = codec.encode_request(tensors, binary=True)
    req = codec.decode_request(body, json_length)
    assert list(req.inputs) == [n for n, _ in tensors]
    for name, x in tensors:
        assert_same(req.inputs[name], x)


@settings(max_examples=60, deadline=None)
@given(tensors=named(allow_nan=False))
def test_json_request_round_trip(tensors):
    body, json_length = codec.encode_request(tensors, binary=False)
    assert json_length is None
    req = codec.decode_request(body, json_length)
    for name, x in tensors:
        assert_same(req.inputs[name], x)
        assert req.datatypes[name] == codec.datatype_of(x.dtype)


def _triton_body(tensors, binary: bool):
    inputs = []
    for name, x in tensors:
        i = httpclient.InferInput(name, list(x.shape), codec.datatype_of(x.dtype))
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    return _get_inference_request(inputs, "req-7", None, 0, False, False, 0, None, None)


@settings(max_examples=60, deadline=None)
@given(tensors=named(allow_nan=False), binary=st.booleans())
def test_decodes_what_tritonclient_sends(tensors, binary):
    body, json_length = _triton_body(tensors, binary)
    body = body if isinstance(body, bytes) else body.encode()
    req = codec.decode_request(body, json_length)
    assert req.id == "req-7"
    assert req.outputs is None and req.binary_output  # tritonclient asks for binary outputs by default
    for name, x in tensors:
        assert_same(req.inputs[name], x)


@settings(max_examples=60, deadline=None)
@given(tensors=named(allow_nan=False), binary=st.booleans())
def test_tritonclient_reads_what_we_answer(tensors, binary):
    body, json_length = codec.encode_response("m", tensors, {n: binary for n, _ in tensors}, "abc")
    result = httpclient.InferResult.from_response_body(body, header_length=json_length)
    assert result.get_response()["id"] == "abc"
    for name, x in tensors:
        assert_same(result.as_numpy(name), x)


def test_mixed_binary_and_json_outputs_and_our_decoder():
    outs = [("a", np.arange(6, dtype="<f4").reshape(2, 3)), ("b", np.array([[1], [2]], dtype="<i8"))]
    body, json_length = codec.encode_response("m", outs, {"a": False, "b": True})
    doc, arrays_ = codec.decode_response(body, json_length)
    assert doc["outputs"][0]["data"] == [0, 1, 2, 3, 4, 5] and "parameters" not in doc["outputs"][0]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 16}
    for name, x in outs:
        assert_same(arrays_[name], x)


def test_nested_json_data_is_accepted():
    doc = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    req = codec.decode_request(json.dumps(doc).encode())
    assert_same(req.inputs["x"], np.array([[1, 2], [3, 4]], dtype="<i8"))


def test_binary_choice_follows_the_request():
    body, n = codec.encode_request(
        [("x", np.zeros(1, "<f4"))], outputs=[RequestedOutput("a", True), RequestedOutput("b")], binary_output=False
    )
    req = codec.decode_request(body, n)
    assert codec.binary_choice(req, ["a", "b", "c"]) == {"a": True, "b": False}
    req.outputs = None
    assert codec.binary_choice(req, ["a", "c"]) == {"a": False, "c": False}


def _input(**kw):
    base = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    base.update(kw)
    return base


def _bad(doc_or_body, json_length=None) -> str:
    body = doc_or_body if isinstance(doc_or_body, bytes) else json.dumps(doc_or_body).encode()
    with pytest.raises(RequestError) as e:
        codec.decode_request(body, json_length)
    assert e.value.failure.status == 400
    return e.value.failure.message


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (b"{not json", "malformed"),
        ([1, 2], "JSON object"),
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [_input(), _input()]}, "appears twice"),
        ({"inputs": [_input(name=3)]}, "'name'"),
        ({"inputs": [_input(datatype="BYTES")]}, "unsupported datatype 'BYTES'"),
        ({"inputs": [_input(shape=[2, -1])]}, "non-negative integers"),
        ({"inputs": [_input(data=None)]}, "neither 'data'"),
        ({"inputs": [_input(data=[1.0, 2.0, 3.0])]}, "has 3 elements but shape [2] needs 2"),
        ({"inputs": [_input(data=[[1.0], [2.0, 3.0]])]}, "not a (nested) list of numbers"),
        ({"inputs": [_input(datatype="INT64", data=[1.5, 2])]}, "not valid INT64"),
        ({"inputs": [_input(datatype="UINT8", data=[1, 300])]}, "not valid UINT8"),
        ({"inputs": [_input(datatype="FP32", data=["a", "b"])]}, "not valid FP32"),
        ({"inputs": [_input(datatype="BOOL", data=[1, 0])]}, "not valid BOOL"),
        ({"inputs": [_input()], "outputs": [{"name": "y", "parameters": {"classification": 3}}]}, "classification"),
        ({"inputs": [_input()], "parameters": {"binary_data_output": "yes"}}, "true or false"),
        ({"inputs": [_input()], "id": 5}, "'id' must be a string"),
    ],
)
def test_bad_requests_name_the_problem(doc, words):
    assert words in _bad(doc)


def test_inconsistent_binary_sizes_are_refused():
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    data = np.array([1, 2], "<f4").tobytes()
    assert "past the end" in _bad(head + data[:4], len(head))
    assert "declare 8" in _bad(head + data + b"xx", len(head))
    assert "body has" in _bad(head, len(head) + 1)
    wrong = head.replace(b'"binary_data_size": 8', b'"binary_data_size": 4')
    assert "needs 8" in _bad(wrong + data, len(wrong))


def test_header_length_must_be_a_number():
    assert codec.header_length(None) is None
    assert codec.header_length("12") == 12
    with pytest.raises(RequestError, match="byte count"):
        codec.header_length("-1")


# -- fuzzing: whatever arrives, the decoder answers with its own error (a 400), never anything else --------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
SHAPES = st.lists(st.integers(-2, 4), max_size=3) | JSON_VALUES


@st.composite
def fuzzed_inputs(draw):
    """An input that is nearly valid: each field is sometimes right, sometimes random."""
    item = {
        "name": draw(st.sampled_from(["x", "y"]) | JSON_VALUES),
        "datatype": draw(st.sampled_from([*DATATYPES, "BYTES"]) | JSON_VALUES),
        "shape": draw(SHAPES),
    }
    if draw(st.booleans()):
        item["data"] = draw(JSON_VALUES)
    else:
        item["parameters"] = {"binary_data_size": draw(st.integers(-1, 64) | JSON_VALUES)}
    return item


def _decodes_or_refuses(body: bytes, json_length: int | None) -> None:
    try:
        req = codec.decode_request(body, json_length)
    except RequestError as e:
        assert e.failure.status == 400 and e.failure.message
        return
    for name, array in req.inputs.items():  # only numbers come out: no objects, the declared datatype
        assert array.dtype == codec.np_dtype(req.datatypes[name]) and array.dtype.kind != "O"


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), json_length=st.none() | st.integers(-4, 210))
def test_random_bytes_never_crash_the_decoder(body, json_length):
    _decodes_or_refuses(body, json_length)


@settings(max_examples=300, deadline=None)
@given(
    inputs=st.lists(fuzzed_inputs(), max_size=3) | JSON_VALUES,
    extra=st.dictionaries(st.sampled_from(["id", "outputs", "parameters"]), JSON_VALUES, max_size=3),
    tail=st.binary(max_size=80),
    binary=st.booleans(),
)
def test_random_documents_never_crash_the_decoder(inputs, extra, tail, binary):
    head = json.dumps({"inputs": inputs, **extra}).encode()
    _decodes_or_refuses(head + tail if binary else head, len(head) if binary else None)


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=6))
def test_any_header_value_is_a_count_or_a_400(value):
    try:
        n = codec.header_length(value)
    except RequestError as e:
        assert e.failure.status == 400
        return
    assert isinstance(n, int) and n >= 0


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"inputs": [{"data": ' + b"[" * 3000 + b"1" + b"]" * 3000 + b"}]}"])
def test_deeply_nested_json_is_a_400(body):
    assert "nested too deeply" in _bad(body)


def test_a_header_length_in_other_digits_is_a_400():
    for value in ("²", "１２", "1_0"):
        with pytest.raises(RequestError, match="byte count"):
            codec.header_length(value)


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_json_numbers_give_every_float_back_exactly(dtype):
    info = np.finfo(dtype)
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.standard_normal(500).astype(dtype) * np.asarray(10.0, dtype) ** rng.integers(-4, 4, 500).astype(dtype),
            np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, info.eps, 0.0, -0.0, 1.0], dtype),
        ]
    )
    text = codec.json_numbers(values.reshape(2, -1))
    back = np.array(json.loads(text), dtype=dtype)
    np.testing.assert_array_equal(back, values)
    assert np.array_equal(np.signbit(back), np.signbit(values))


def test_json_numbers_are_shorter_than_python_floats_and_keep_json_for_the_rest():
    x = np.random.default_rng(4).standard_normal(1000).astype("<f4")
    assert len(codec.json_numbers(x)) < 0.7 * len(json.dumps(x.tolist()))
    for other in (np.array([np.nan, np.inf, 1.5], "<f4"), np.arange(5, dtype="<i8"), np.array([True, False])):
        assert codec.json_numbers(other) == json.dumps(other.tolist(), separators=(",", ":"))


def test_binary_outputs_follow_the_header_unchanged():
    a = np.arange(12, dtype="<f4").reshape(3, 4)[1:]  # a view: its own bytes, not its base's
    body, n = codec.encode_response("m", [("a", a), ("b", np.ones((2, 1), "<i8"))], {"a": True, "b": True}, "x")
    assert body[n:] == a.tobytes() + np.ones((2, 1), "<i8").tobytes()
    doc = json.loads(body[:n])
    assert doc["id"] == "x" and [o["parameters"]["binary_data_size"] for o in doc["outputs"]] == [32, 16]
