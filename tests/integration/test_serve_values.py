"""Hostile values and bodies through real Ray Serve on the CPU backend: every answer is a 2xx or a 4xx.

One application of three small models: ``tiny-bert`` (token ids, range from its transformers config),
``tiny-cnn`` (floats, no range) and ``embed``, a user's model loaded by import path whose token-id range
the GPU actor learns from its nn.Embedding at start, beside a 0/1 mask declared in the config, and
``poison``, which acts on the CPU as a GPU does after a device-side assert. The
fuzzing sends KServe v2 bodies, JSON and binary (``Inference-Header-Content-Length``), with hostile
names, datatypes, shapes, lengths and values, and checks that none gets a 5xx and that good requests
still succeed afterwards.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

pytest.importorskip("ray.serve")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_load  # noqa: E402
from serve_models import RAY_MODULE  # noqa: E402

from eclip_ray.actor.spec import DATATYPES  # noqa: E402
from eclip_ray.serve import AppConfig  # noqa: E402
from eclip_ray.serve._private import codec  # noqa: E402

CONFIG = {
    "backend": "cpu",
    "allowed_modules": [RAY_MODULE],
    "models": [
        {"name": "tiny-bert", "max_batch_size": 4, "batch_wait_timeout_s": 0.002},
        {"name": "tiny-cnn", "max_batch_size": 4, "batch_wait_timeout_s": 0.002},
        {
            "name": "embed",
            "loader": f"{RAY_MODULE}:EmbedWithMask",
            "max_batch_size": 4,
            "batch_wait_timeout_s": 0.002,
            "inputs": [
                {"name": "ids", "datatype": "INT64", "shape": [6]},
                {"name": "mask", "datatype": "INT64", "shape": [6], "value_range": [0, 1]},
            ],
        },
        # acts as a GPU after a device-side assert when an index passes its table (the last test)
        {
            "name": "poison",
            "loader": f"{RAY_MODULE}:SimulatedAssert",
            "max_batch_size": 1,
            "inputs": [{"name": "idx", "datatype": "INT64", "shape": [8]}],
        },
    ],
    "limits": {"request_timeout_s": 10, "retry_after_s": 1, "max_request_bytes": 1 << 20},
}
GOOD = {
    "tiny-bert": [("input_ids", np.arange(32, dtype="<i8").reshape(2, 16) * 31)],
    "tiny-cnn": [("input", np.zeros((1, 3, 32, 32), "<f4"))],
    "embed": [("ids", np.full((1, 6), 49, "<i8")), ("mask", np.ones((1, 6), "<i8"))],
}


@pytest.fixture(scope="module")
def app():
    config = AppConfig.model_validate(CONFIG).resolved()
    with (
        serve_load.local_app(config.model_dump(mode="json"), num_cpus=2) as url,
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        yield c, config


def send(c: httpx.Client, model: str, inputs, binary: bool = True) -> httpx.Response:
    body, length = codec.encode_request(inputs, binary=binary)
    headers = {} if length is None else {codec.HEADER: str(length)}
    return c.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def assert_serving(c: httpx.Client) -> None:
    for model, inputs in GOOD.items():
        r = send(c, model, inputs)
        assert r.status_code == 200, (model, r.text)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("value", [1000, -1, 10**7, 2**63 - 1])
def test_token_ids_out_of_range_get_400_and_every_model_serves_on(app, value, binary):
    c, _ = app
    ids = np.zeros((2, 16), "<i8")
    ids[1, 5] = value
    r = send(c, "tiny-bert", [("input_ids", ids)], binary)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == (
        f"model 'tiny-bert': input 'input_ids' holds the value {value} at index [1, 5], outside its range "
        "[0, 999] (inclusive)"
    )
    assert_serving(c)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([("ids", np.full((1, 6), 50, "<i8")), GOOD["embed"][1]], "input 'ids' holds the value 50 at index [0, 0]"),
        ([("ids", np.full((1, 6), -2, "<i8")), GOOD["embed"][1]], "input 'ids' holds the value -2"),
        ([GOOD["embed"][0], ("mask", np.full((1, 6), 2, "<i8"))], "input 'mask' holds the value 2"),
    ],
    ids=["learnt-too-large", "learnt-negative", "declared-mask"],
)
def test_a_users_model_gets_400_for_its_learnt_and_declared_ranges(app, inputs, words):
    c, _ = app
    r = send(c, "embed", inputs)
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert "outside its range" in r.json()["error"]
    assert_serving(c)


def test_the_ranges_a_gpu_actor_learnt_are_reported_by_it(app):
    import ray

    state = ray.get(serve_load.gpu_actor(0).ready.remote())["models"]
    assert state["embed"]["value_ranges"] == {"ids": [0, 49], "mask": [0, 1]}
    assert state["tiny-bert"]["value_ranges"] == {"input_ids": [0, 999]}
    assert state["tiny-cnn"]["value_ranges"] == {}


# -- fuzzing -----------------------------------------------------------------------------------------

NAMES = {"tiny-bert": ["input_ids"], "tiny-cnn": ["input"], "embed": ["ids", "mask"]}
SHAPES = {"input_ids": [16], "input": [3, 32, 32], "ids": [6], "mask": [6]}
KINDS = {"input_ids": "INT64", "input": "FP32", "ids": "INT64", "mask": "INT64"}
HIGH = {"input_ids": 999, "ids": 49, "mask": 1}
EXTREMES = [0, 1, -1, 49, 50, 999, 1000, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, 10**30]
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([1e300, -1e300, 0.5])
DATATYPES_ANY = st.sampled_from([*DATATYPES, "BYTES", "BF16", "FP8", "", "int64"])


@st.composite
def tensor(draw, model: str):
    """One input entry and its raw bytes (None: JSON data): mostly the model's own name, datatype and shape with
    hostile values; sometimes a wrong name, datatype, shape or length."""
    names = NAMES[model]
    name = draw(st.sampled_from(names) | st.sampled_from(["x", "", "input_ids", "mask"]))
    right = name in SHAPES
    datatype = KINDS[name] if right and draw(st.booleans()) else draw(DATATYPES_ANY)
    rows = draw(st.integers(0, 5))
    shape = [rows, *SHAPES[name]] if right and draw(st.integers(0, 3)) else draw(_hostile_shape())
    values = _values(draw, datatype, math.prod(shape) if all(d >= 0 for d in shape) else 0)
    entry = {"name": name, "datatype": datatype, "shape": shape}
    if draw(st.booleans()):  # JSON data: possibly the wrong count, nested, or not numbers at all
        entry["data"] = draw(st.just(values) | st.sampled_from([[], [[1, 2], [3]], ["a"], [True], {"a": 1}, None]))
        return entry, None
    raw = _bytes(datatype, values)
    cut = draw(st.sampled_from([0, 0, 0, 1, -1, 7]))
    raw = raw[: max(0, len(raw) - cut)] if cut > 0 else raw + b"\0" * -cut
    entry["parameters"] = {"binary_data_size": draw(st.sampled_from([len(raw), len(raw) + 1, -1, "8"]))}
    return entry, raw


def _hostile_shape():
    dims = st.integers(-3, 40) | st.sampled_from([2**31, 2**40, 10**18])
    return st.lists(dims, max_size=5) | st.sampled_from([[1, 16], [1, 3, 32], [0, 6], [2**62, 16]])


def _values(draw, datatype: str, count: int) -> list:
    count = min(count, 4096)  # a big shape gets a short body: a 400 either way
    if datatype.startswith("FP"):
        return draw(st.lists(FLOATS, min_size=count, max_size=count))
    ints = st.sampled_from(EXTREMES) | st.integers(-5, 60)
    return draw(st.lists(ints, min_size=count, max_size=count))


def _bytes(datatype: str, values: list) -> bytes:
    dtype = DATATYPES.get(datatype, np.dtype("<i8"))
    with np.errstate(all="ignore"):
        if dtype.kind in "iub":
            info = np.iinfo(dtype) if dtype.kind != "b" else None
            clipped = [v if info is None else min(max(int(v), info.min), info.max) for v in values if _finite(v)]
            return np.array(clipped, dtype=dtype).tobytes()
        return np.array(values, dtype="<f8").astype(dtype).tobytes()


def _finite(v) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


@st.composite
def well_formed(draw, model: str):
    """Every input of ``model`` with its name, datatype and shape, framed right: only the values are hostile
    (mostly valid, sometimes one past a range, negative, huge, NaN or infinite)."""
    rows = draw(st.integers(1, 4))
    entries = []
    for name in NAMES[model]:
        count = rows * math.prod(SHAPES[name])
        if KINDS[name] == "FP32":  # too many for hypothesis to draw one by one: a few hostile ones among noise
            values = np.random.default_rng(draw(st.integers(0, 2**32))).standard_normal(count).tolist()
            for _ in range(draw(st.integers(0, 3))):
                values[draw(st.integers(0, count - 1))] = draw(FLOATS)
        else:
            values = draw(st.lists(st.integers(0, HIGH[name]), min_size=count, max_size=count))
            if draw(st.booleans()):
                values[draw(st.integers(0, count - 1))] = draw(st.sampled_from(EXTREMES) | st.integers(-3, 1003))
        array = np.array(values, DATATYPES[KINDS[name]] if KINDS[name] == "FP32" else object)
        entries.append((name, array.reshape(rows, *SHAPES[name])))
    binary = draw(st.booleans())
    if binary and any(a.dtype == object and not _fits_int64(a) for _, a in entries):
        binary = False  # values past INT64 travel only as JSON numbers
    if binary:
        return codec.encode_request([(n, a.astype("<i8") if a.dtype == object else a) for n, a in entries])
    doc = {
        "inputs": [
            {"name": n, "datatype": KINDS[n], "shape": list(a.shape), "data": a.ravel().tolist()} for n, a in entries
        ]
    }
    return json.dumps(doc).encode(), None


def _fits_int64(a: np.ndarray) -> bool:
    return all(-(2**63) <= int(v) < 2**63 for v in a.ravel())


@st.composite
def hostile(draw, model: str):
    """Up to three input entries, each possibly of a wrong name, datatype, shape, length or framing."""
    entries = draw(st.lists(tensor(model), min_size=0, max_size=3))
    head = json.dumps({"inputs": [e for e, _ in entries]}).encode()
    tail = b"".join(raw for _, raw in entries if raw is not None)
    header = draw(st.sampled_from(["right", "right", "none", "short", "long", "junk"]))
    length = {
        "right": str(len(head)),
        "short": str(max(0, len(head) - 3)),
        "long": str(len(head) + len(tail) + 5),
        "junk": draw(st.sampled_from(["-1", "x", "1e3", "0", "9" * 30])),
    }.get(header)
    return head + tail, length


@st.composite
def request(draw):
    model = draw(st.sampled_from(sorted(NAMES)))
    body, length = draw(st.one_of(well_formed(model), well_formed(model), hostile(model)))
    return model, body, {} if length is None else {codec.HEADER: str(length)}


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(req=request())
def test_hostile_request_bodies_never_get_a_5xx(app, req):
    c, _ = app
    model, body, headers = req
    r = c.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    event(f"{r.status_code} {r.json().get('error', '')[:60] if r.status_code >= 400 else ''}")
    assert r.status_code < 500, (r.status_code, r.text, body[:300], headers)
    if r.status_code >= 400:
        assert set(r.json()) == {"error"} and r.json()["error"]


def test_good_requests_succeed_after_the_fuzzing(app):
    c, _ = app
    assert_serving(c)
    stats = c.get("/v2/models/embed/stats").json()["model_stats"][0]
    assert all(g["available"] for g in stats["gpus"])


def test_a_poisoned_device_context_restarts_the_actor_and_every_model_comes_back(app):
    """The actor's sticky-fault path through real Ray (the CPU backend's probe made to fail by the model): the
    batch gets 503, the actor exits and Ray restarts it, meanwhile every request gets a quick 503 with
    Retry-After, then every model answers 200 from a new process."""
    import ray

    c, _ = app
    before = ray.get(serve_load.gpu_actor(0).process.remote())["pid"]
    r = send(c, "poison", [("idx", np.full((1, 8), 64, "<i8"))])
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert "device context is unusable (simulated CUDA_ERROR_ASSERT" in r.json()["error"]
    t0, statuses = time.monotonic(), []
    while time.monotonic() - t0 < 90:
        start = time.monotonic()
        r = send(c, "tiny-bert", GOOD["tiny-bert"])
        assert time.monotonic() - start < 25, "an answer, not a hang"
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        time.sleep(0.25)
    print(f"back after {time.monotonic() - t0:.1f} s: {statuses}")
    assert statuses[-1] == 200 and 503 in statuses, statuses
    assert_serving(c)
    handle = serve_load.gpu_actor(0)
    assert ray.get(handle.process.remote())["pid"] != before
    assert ray.get(handle.stats.remote())["context_fault"] is None
    assert send(c, "poison", [("idx", np.arange(8, dtype="<i8")[None])]).status_code == 200
