"""`ganq export-ort`: every format at 8, 4 and 3 bits converts with onnxruntime's own tool, loads back in onnxruntime
and computes what the .onnx file computes; the k-bit planes stay in the file; 4-bit int codes never give a file
that does not load."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from ganq.app.mobile import export_ort, read_operators
from ganq.cli import app as cli
from ganq.quantize import QuantizeOptions, quantize_file


@pytest.mark.parametrize("fmt", ["fake", "int", "packed"])
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_every_format_converts_loads_and_matches(tiny_onnx, tmp_path, fmt, bits):
    src = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, src, QuantizeOptions(bits=bits, format=fmt, granularity="channel"))
    r = export_ort(src, tmp_path / "q.ort")
    assert r["max_abs_diff"] <= 1e-5 and r["bytes_ort"] == (tmp_path / "q.ort").stat().st_size
    z = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "q.ort"), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if fmt == "packed"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    want = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
    assert np.abs(got - want).max() <= 1e-5
    ops = read_operators(tmp_path / "q.required_operators.config")
    assert ops == r["operators"] and "ConvTranspose" in ops
    if fmt == "packed":
        assert r["optimization"] == "disable" and {"BitShift", "BitwiseAnd"} <= set(ops)
        assert r["bytes_ort"] <= 1.15 * r["bytes_onnx"] + 8192  # the bit planes stayed
    if fmt == "int" and bits <= 4:
        assert any("UINT8" in n for n in r["notes"])


def test_packed_at_default_level_would_be_fp32_sized(tiny_onnx, tmp_path):
    """Why packed files are converted unoptimised: the basic level folds the decoder into float weights."""
    quantize_file(tiny_onnx, tmp_path / "p.onnx", QuantizeOptions(bits=3, format="packed"))
    folded = export_ort(tmp_path / "p.onnx", tmp_path / "folded.ort", optimization="basic")
    kept = export_ort(tmp_path / "p.onnx", tmp_path / "kept.ort")
    assert folded["bytes_ort"] > 3 * kept["bytes_ort"] and any("folds" in n for n in folded["notes"])


@pytest.mark.parametrize("fmt,gran", [("int", "channel"), ("packed", "channel"), ("nbits", "group:16")])
def test_the_mobile_trade_off(tiny_onnx, tmp_path, fmt, gran):
    """coded keeps the codes (small), decoded holds float32 weights (no decoder left, fp32-sized) and both compute
    what the .onnx file computes; an nbits file keeps its MatMulNBits nodes coded and decodes them into MatMul."""
    src = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, src, QuantizeOptions(bits=4, format=fmt, granularity=gran))
    coded = export_ort(src, tmp_path / "c.ort")
    dec = export_ort(src, tmp_path / "d.ort", weights="decoded")
    fp32 = export_ort(tiny_onnx, tmp_path / "f.ort")
    assert coded["weights"] == "coded" and dec["weights"] == "decoded"
    assert coded["bytes_ort"] < 0.6 * dec["bytes_ort"] and dec["bytes_ort"] >= 0.9 * fp32["bytes_ort"]
    assert not {"DequantizeLinear", "BitShift"} & set(dec["operators"])
    z = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    outs = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
            for f in ("c.ort", "d.ort")]
    assert np.abs(outs[0] - outs[1]).max() <= 1e-5
    if fmt == "nbits":
        assert "com.microsoft:MatMulNBits" in coded["operators"]
        assert not any("MatMulNBits" in op for op in dec["operators"])


def test_export_ort_bad_input(tiny_onnx, tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "relu.onnx"))
    for args, msg in (([str(tmp_path / "relu.onnx"), "--out", str(tmp_path / "a.ort")], "not a ganq generator"),
                      ([str(tiny_onnx), "--out", str(tmp_path / "a.onnx")], "ends in .ort"),
                      ([str(tiny_onnx), "--out", str(tmp_path / "a.ort"), "--optimization", "max"], "disable, basic"),
                      ([str(tiny_onnx), "--out", str(tmp_path / "a.ort"), "--weights", "raw"], "coded or decoded"),
                      ([str(tmp_path / "none.onnx"), "--out", str(tmp_path / "a.ort")], "no such file")):
        r = CliRunner().invoke(cli, ["export-ort", *args])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx"]
    r = CliRunner().invoke(cli, ["export-ort", str(tiny_onnx), "--out", str(tmp_path / "g.ort"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["format"] == "fp32"
