"""Converters for opsets 18+ (onnx_ops), on one-operator graphs checked against onnxruntime (CPU)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from eclip_ray.models import onnx as onnx_models
from eclip_ray.models.onnx_ops import type_only_change


def one_op(tmp_path, node, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph([node], node.op_type, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / f"{node.op_type}.onnx"
    onnx.save(model, str(path))
    return onnx_models.load(path, [tmp_path])


def floats(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape])


def matches_onnxruntime(model):
    module = model.to_module()  # verify=True already compares; compare here too, output by output
    x = model.make_inputs(3)
    got = module(*x)
    got = (got,) if isinstance(got, torch.Tensor) else got
    for ours, ref in zip(got, model.reference(x), strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    return module


@pytest.mark.parametrize(
    ("op", "axes", "attrs", "out_shape"),
    [
        ("ReduceMean", [2, 3], {"keepdims": 0}, [4]),
        ("ReduceMax", None, {"keepdims": 1}, [1, 1, 1]),
        ("ReduceL2", [1], {}, [1, 5, 6]),
        ("ReduceSumSquare", None, {"noop_with_empty_axes": 1}, [4, 5, 6]),  # no reduction, still squared
        ("ReduceMean", None, {"noop_with_empty_axes": 1}, [4, 5, 6]),
    ],
)
def test_reduce_18_takes_axes_from_a_constant_input(tmp_path, op, axes, attrs, out_shape):
    inits = [numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes")] if axes is not None else []
    node = helper.make_node(op, ["x", "axes"] if axes is not None else ["x"], ["y"], **attrs)
    matches_onnxruntime(one_op(tmp_path, node, [floats("x", 4, 5, 6)], [floats("y", *out_shape)], 18, inits))


def test_split_18_by_number_of_outputs_leaves_the_last_chunk_smaller(tmp_path):
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)
    outs = [floats("a", 3), floats("b", 3), floats("c", 1)]
    module = matches_onnxruntime(one_op(tmp_path, node, [floats("x", 7)], outs, 18))
    assert [t.shape[1] for t in module(torch.zeros(2, 7))] == [3, 3, 1]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20(tmp_path, approximate):
    node = helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)
    matches_onnxruntime(one_op(tmp_path, node, [floats("x", 8)], [floats("y", 8)], 20))


def test_type_only_version_bumps_reuse_the_older_converter(tmp_path):
    node = helper.make_node("Shape", ["x"], ["s"], start=1)
    shape = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    module = one_op(tmp_path, node, [floats("x", 5, 6)], [shape], 21).to_module()
    assert module(torch.zeros(2, 5, 6)).tolist() == [5, 6]


def test_reshape_allowzero_to_a_constant_shape_converts(tmp_path):
    target = numpy_helper.from_array(np.array([-1, 6], dtype=np.int64), "shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)
    matches_onnxruntime(one_op(tmp_path, node, [floats("x", 2, 3)], [floats("y", 6)], 19, [target]))


def test_what_cannot_be_converted_is_named(tmp_path):
    ints = helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 4])
    node = helper.make_node("BitwiseAnd", ["x", "x"], ["y"])
    model = one_op(tmp_path, node, [ints], [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])], 18)
    with pytest.raises(ValueError, match=r"cannot convert \['BitwiseAnd-18'\] of BitwiseAnd.onnx, and onnx cannot"):
        model.to_module()


def test_only_signature_equal_versions_count_as_type_only():
    assert type_only_change("Shape", 15, 21) and type_only_change("Reshape", 14, 21)
    assert type_only_change("Cast", 13, 19)  # saturate only changes float8 casts, which are not converted
    assert not type_only_change("ReduceMean", 13, 18)  # axes became an input
    assert not type_only_change("Split", 13, 18)  # num_outputs
    assert not type_only_change("AveragePool", 11, 19)  # dilations
