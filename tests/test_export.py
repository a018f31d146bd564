import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from ganq.errors import GanqError  # noqa: E402
from ganq.export import OPSET  # noqa: E402
from ganq.spec import GeneratorSpec  # noqa: E402
from ganq.onnx_io import META_SPEC, read_metadata, read_spec


def test_export_contract(exported_onnx):
    m = onnx.load(str(exported_onnx))
    onnx.checker.check_model(m, full_check=True)
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    spec = read_spec(m)
    assert (spec.latent_dim, spec.image_shape, spec.arch, spec.dataset) == (16, (1, 28, 28), "cnn3", "mnist")
    (z,), (img,) = m.graph.input, m.graph.output
    assert z.name == "z" and img.name == "image"
    assert z.type.tensor_type.shape.dim[0].dim_param and img.type.tensor_type.shape.dim[0].dim_param
    assert [d.dim_value for d in img.type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    assert "BatchNormalization" in {n.op_type for n in m.graph.node}  # kept by default


def test_dynamic_batch_and_reference_evaluator(exported_onnx):
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    sess = ort.InferenceSession(str(exported_onnx), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(str(exported_onnx))
    for n in (1, 5, 17):
        z = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
        y = sess.run(None, {"z": z})[0]
        assert y.shape == (n, 1, 28, 28) and y.min() >= -1 and y.max() <= 1
    # the pure-python oracle is slow on ConvTranspose: one small batch
    assert np.allclose(ref.run(None, {"z": z[:2]})[0], y[:2], atol=1e-5)


def test_parity_against_torch(tiny_run, exported_onnx):
    import torch
    from ganq.export import parity
    from ganq.train.checkpoint import load_generator

    g, spec, _ = load_generator(tiny_run)
    assert parity(g, onnx.load(str(exported_onnx)), spec, n=64) <= 1e-5
    # a generator whose weights changed after export must fail the parity check
    with torch.no_grad():
        next(g.parameters()).add_(0.1)
    assert parity(g, onnx.load(str(exported_onnx)), spec, n=64) > 1e-3


def test_export_refuses_bad_source(tmp_path):
    from ganq.export import export

    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(GanqError, match="not a readable ganq checkpoint"):
        export(tmp_path / "junk.pt", tmp_path / "g.onnx")
    with pytest.raises(GanqError, match="no checkpoint.pt"):
        export(tmp_path, tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


def test_describe_foreign_model(exported_onnx, tmp_path):
    from ganq.onnx_io import describe

    m = onnx.load(str(exported_onnx))
    del m.metadata_props[:]
    m.graph.input[0].name = "noise"
    for n in m.graph.node:
        n.input[:] = ["noise" if i == "z" else i for i in n.input]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(m, str(foreign))
    with pytest.raises(GanqError, match="not a ganq generator"):
        read_spec(onnx.load(str(foreign)), "foreign.onnx")
    with pytest.raises(GanqError, match=r"not \[N, 99\]"):
        describe(foreign, foreign, latent_dim=99)
    spec = describe(foreign, foreign, latent_dim=16, latent="uniform", output_range=(0, 1))
    got = read_spec(onnx.load(str(foreign)))
    assert got == spec and got.input_name == "noise" and got.latent == "uniform" and got.output_range == (0.0, 1.0)
    assert META_SPEC in read_metadata(onnx.load(str(foreign)))


def test_spec_json_roundtrip_and_validation():
    s = GeneratorSpec(latent_dim=3, channels=3, height=32, width=32, dataset="cifar10", arch="dcgan")
    assert GeneratorSpec.from_json(s.to_json()) == s
    for bad in ({"latent_dim": 0}, {"channels": 2}, {"latent": "cauchy"}, {"output_range": (1, -1)}):
        with pytest.raises(GanqError):
            GeneratorSpec(**{**dict(latent_dim=3, channels=1, height=28, width=28), **bad})
    with pytest.raises(GanqError, match="unknown fields"):
        GeneratorSpec.from_dict({**s.to_dict(), "color": "red"})
