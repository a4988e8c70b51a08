"""mcir as an onnx.backend Backend, checked with a representative subset of the node tests in the wheel
(benchmarks/onnx_conformance.py runs them all)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from mcir.errors import UnsupportedError
from mcir.frontend.onnx_backend import McirBackend, NativeBackend, node_cases, run_case

#: one or a few cases of each family of ops models use
SUBSET = [
    "test_relu", "test_sigmoid", "test_tanh", "test_add_bcast", "test_mul", "test_div", "test_sub_bcast",
    "test_conv_with_strides_padding", "test_conv_with_autopad_same", "test_conv_with_strides_and_asymmetric_padding",
    "test_gemm_default_matrix_bias", "test_gemm_transposeA", "test_gemm_alpha", "test_matmul_3d",
    "test_batchnorm_example", "test_maxpool_2d_pads", "test_maxpool_2d_same_upper", "test_maxpool_2d_ceil",
    "test_averagepool_2d_pads", "test_averagepool_2d_same_lower", "test_globalaveragepool", "test_flatten_axis0",
    "test_flatten_negative_axis2", "test_reshape_negative_dim", "test_transpose_default", "test_concat_3d_axis_1",
    "test_softmax_axis_1", "test_logsoftmax_default_axis", "test_layer_normalization_3d_axis1_epsilon",
    "test_gelu_default_1", "test_erf", "test_gather_0", "test_slice", "test_split_equal_parts_1d_opset18",
    "test_slice_neg_steps", "test_squeeze", "test_unsqueeze_two_axes", "test_clip", "test_constant_pad",
    "test_dropout_default", "test_identity", "test_lrn", "test_reduce_mean_keepdims_example",
    "test_reduce_sum_default_axes_keepdims_example", "test_leakyrelu", "test_hardsigmoid", "test_where_example",
    "test_expand_dim_changed", "test_quantizelinear", "test_sum_example",
]  # fmt: skip


@pytest.fixture(scope="module")
def cases():
    return {c.name: c for c in node_cases() if c.name in SUBSET}


def test_the_subset_exists_in_this_onnx(cases):
    assert sorted(set(SUBSET) - set(cases)) == []


@pytest.mark.parametrize("name", SUBSET)
def test_node_case_passes_in_the_interpreter(name, cases):
    outcome, detail = run_case(cases[name], "interp")
    assert outcome == "pass", detail


@pytest.mark.parametrize("name", ["test_conv_with_strides_padding", "test_gemm_default_matrix_bias", "test_lrn"])
def test_node_case_passes_natively(name, cases):
    outcome, detail = run_case(cases[name], "native")
    assert outcome == "pass", detail


def test_unsupported_node_case_is_reported_as_unsupported():
    (case,) = [c for c in node_cases("test_sin") if c.name == "test_sin"]
    outcome, detail = run_case(case, "interp")
    assert outcome == "unsupported"
    assert "unsupported ONNX op Sin (node" in detail


def test_shape_inputs_are_bound_to_the_values_run_with():
    # Reshape's shape is a graph input in ONNX's tests; the backend imports once per value
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
             helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    rep = McirBackend.prepare(model)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    (y,) = rep.run([x, np.array([3, 4])])
    assert y.shape == (3, 4)
    (y,) = rep.run([x, np.array([4, 3])])
    assert y.shape == (4, 3)


def test_run_node_and_devices():
    node = helper.make_node("Relu", ["x"], ["y"])
    (y,) = NativeBackend.run_node(node, [np.array([-1.0, 2.0], np.float32)])
    np.testing.assert_array_equal(y, [0.0, 2.0])
    assert McirBackend.supports_device("CPU") and not McirBackend.supports_device("CUDA")
    with pytest.raises(UnsupportedError):
        McirBackend.run_node(helper.make_node("Sin", ["x"], ["y"]), [np.zeros(2, np.float32)])
