"""The op table (quantize/ops.py): weight discovery through value-preserving ops, with the channel axis mapped
back to the initializer; method option ranges declared on the fields, checked by one function."""

import dataclasses
import typing

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ganq.errors import GanqError
from ganq.quantize import QuantizeOptions, quantize_model
from ganq.quantize.methods import METHODS, make_method
from ganq.quantize.ops import OPS, count_weights, find_targets


def _model(rng):
    """z [N, 6] -> MatMul(z, Identity(Cast(A))) -> Reshape [N, 2, 2, 2] -> Conv(Transpose(B)) : weights reached
    through value-preserving ops, B stored transposed ([kh, kw, C_in, C_out] -> [C_out, C_in, kh, kw])."""
    a = rng.standard_normal((6, 8)).astype(np.float32)
    b = rng.standard_normal((1, 1, 2, 3)).astype(np.float32)  # kh, kw, C_in, C_out
    nodes = [helper.make_node("Cast", ["A"], ["A1"], to=TensorProto.FLOAT),
             helper.make_node("Identity", ["A1"], ["A2"]),
             helper.make_node("MatMul", ["z", "A2"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["h4"]),
             helper.make_node("Transpose", ["B"], ["B1"], perm=[3, 2, 0, 1]),
             helper.make_node("Conv", ["h4", "B1"], ["image"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 2, 2])],
                          [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B"),
                           numpy_helper.from_array(np.array([-1, 2, 2, 2], np.int64), "shape")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m, a, b


def test_weights_reached_through_value_preserving_ops_are_found_at_the_initializer():
    m, _, _ = _model(np.random.default_rng(0))
    t = {x.name: x for x in find_targets(m)}
    assert set(t) == {"A", "B"} and count_weights(m) == 2
    assert t["A"].axis == 1 and t["A"].op_type == "MatMul" and not t["A"].direct
    # Conv's output channels are axis 0 of the transposed tensor, axis 3 of the stored one
    assert t["B"].axis == 3 and t["B"].in_axis == 2 and t["B"].op_type == "Conv"


def test_such_weights_quantize_per_channel_of_the_op_they_reach():
    rng = np.random.default_rng(1)
    m, a, b = _model(rng)
    q, rep = quantize_model(m, QuantizeOptions(bits=2, granularity="channel"))
    got = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for name, w, axis in (("A", a, 1), ("B", b, 3)):
        moved = np.moveaxis(got[name], axis, 0).reshape(w.shape[axis], -1)
        assert all(len(np.unique(r)) <= 4 for r in moved)
        lo, hi = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).min(1), \
            np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(1)
        assert np.allclose(moved.min(1), lo, atol=1e-6) and np.allclose(moved.max(1), hi, atol=1e-6)
    assert rep["params_quantized"] == a.size + b.size
    onnx.checker.check_model(q, full_check=True)


def test_calibrated_methods_fall_back_with_a_note_on_weights_they_cannot_see_directly():
    from ganq.onnx_io import META_SPEC, write_metadata
    from ganq.spec import GeneratorSpec

    m, _, _ = _model(np.random.default_rng(2))
    write_metadata(m, META_SPEC, GeneratorSpec(latent_dim=6, channels=3, height=2, width=2).to_json())
    _, rep = quantize_model(m, QuantizeOptions(bits=3, method="gptq", granularity="channel", calibration=16))
    rows = {r["tensor"]: r for r in rep["tensors"]}
    assert rows["A"]["fallback_from"] == "gptq" and rows["A"]["method"] == "minmax"
    assert any(n.startswith("A: gptq cannot build") for n in rep["notes"])


def test_every_weight_op_has_its_facts():
    for name, info in OPS.items():
        from ganq.quantize.columns import BUILDERS

        # every column kind has a builder, except a lookup table's (an embedding: calibrated methods fall back)
        assert info.op_type == name and info.weight >= 0 and (info.columns in BUILDERS or info.columns == "lookup")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_option_declares_its_range_or_choices_and_is_checked(name):
    cls = METHODS.get(name)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if typ in (int, float):
            lo, hi, _, _ = f.metadata["range"]
            assert lo is not None and hi is not None, (name, f.name)
            with pytest.raises(GanqError, match=f"method {name}: {f.name} must be in"):
                make_method(name, {f.name: hi * 2 + 1})
        elif typ is bool:
            with pytest.raises(GanqError, match=f"{f.name} must be true or false"):
                make_method(name, {f.name: 5})
        elif f.metadata.get("path"):  # a file option: a missing file is one line naming it
            with pytest.raises(GanqError, match=f"{f.name}=nope: .*no such file"):
                make_method(name, {f.name: "nope"})
        else:
            with pytest.raises(GanqError, match=f"{f.name} must be one of"):
                make_method(name, {f.name: "nope"})
