"""Every reader of files from outside, fed arbitrary bytes (hypothesis): it loads or raises GanqError, nothing else.
Readers: IDX (plain and gz), CIFAR-10 batches, .npy/.npz feature arrays, image folders and zips, ONNX metadata
(ganq.spec, ganq.quant, ganq.features), checkpoints, sweep cache entries, plan files. A longer run: set
GANQ_FUZZ_EXAMPLES (e.g. 20000)."""

import gzip
import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganq.errors import GanqError

N = int(os.environ.get("GANQ_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


def _loads_or_ganq(fn, *a):
    try:
        fn(*a)
    except GanqError:
        pass


def _idx_like():
    """Bytes that often pass the magic number, so the header and size checks are exercised."""
    head = st.tuples(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]), st.integers(0, 4),
                     st.lists(st.integers(0, 2 ** 32 - 1), max_size=4), st.binary(max_size=64))
    return head.map(lambda t: bytes([0, 0, t[0], t[1]]) + b"".join(struct.pack(">I", d) for d in t[2]) + t[3])


@FUZZ
@given(st.one_of(st.binary(max_size=200), _idx_like()), st.booleans())
def test_idx(tmp_path, data, gz):
    from ganq.data.idx import read_idx

    p = tmp_path / ("f.gz" if gz else "f")
    p.write_bytes(gzip.compress(data) if gz and len(data) % 2 else data)
    _loads_or_ganq(read_idx, p)


@FUZZ
@given(st.binary(max_size=300))
def test_cifar_batch(tmp_path, data):
    from ganq.data.cifar import read_batch

    (tmp_path / "b").write_bytes(data)
    _loads_or_ganq(read_batch, tmp_path / "b")


def _npy_like():
    good = io.BytesIO()
    np.save(good, np.zeros((3, 4), np.float32))
    raw = good.getvalue()
    return st.one_of(st.binary(max_size=200),
                     st.tuples(st.integers(0, len(raw)), st.binary(max_size=40)).map(lambda t: raw[:t[0]] + t[1]),
                     st.text(max_size=60).map(lambda h: raw[:10] + h.encode()[:60].ljust(60) + raw[70:]))


@FUZZ
@given(_npy_like())
def test_feature_arrays(tmp_path, data):
    from ganq.evaluate import load_features

    (tmp_path / "f.npy").write_bytes(data)
    _loads_or_ganq(load_features, tmp_path / "f.npy", "features")


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_image_folder_zip(tmp_path, data, as_zip):
    from ganq.data.folder import read_image_folder

    if as_zip:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a/x.png", data)
            z.writestr("b/y.jpg", data[::-1])
        (tmp_path / "d.zip").write_bytes(buf.getvalue())
        _loads_or_ganq(read_image_folder, tmp_path / "d.zip", 8, 1)
    else:
        (tmp_path / "d" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "a" / "x.png").write_bytes(data)
        _loads_or_ganq(read_image_folder, tmp_path / "d", 8, 3)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10 ** 12, 10 ** 12) | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
                           max_leaves=12)
spec_like = st.fixed_dictionaries({}, optional={
    "latent_dim": json_values | st.integers(-5, 10 ** 9), "channels": json_values | st.sampled_from([1, 3]),
    "height": json_values | st.integers(0, 64), "width": json_values | st.integers(0, 64),
    "latent": json_values | st.sampled_from(["normal", "uniform"]), "output_range": json_values,
    "input_name": json_values, "output_name": json_values, "dataset": json_values, "arch": json_values,
    "extra": json_values})


@FUZZ
@given(st.one_of(st.text(max_size=80), json_values.map(json.dumps), spec_like.map(json.dumps)))
def test_spec_metadata(text):
    from ganq.spec import GeneratorSpec

    _loads_or_ganq(GeneratorSpec.from_json, text)


@FUZZ
@given(st.one_of(st.text(max_size=80), json_values.map(json.dumps), spec_like.map(json.dumps)))
def test_spec_against_a_graph(tiny_onnx, tmp_path, text):
    """A generator whose ganq.spec is anything: the Generator refuses it in one line or runs it."""
    import onnx

    from ganq.runtime import Generator
    from ganq.onnx_io import META_SPEC, write_metadata

    m = onnx.load(str(tiny_onnx))
    write_metadata(m, META_SPEC, text)
    onnx.save(m, str(tmp_path / "g.onnx"))
    try:
        g = Generator(tmp_path / "g.onnx")
        g.generate(2, 0)
    except GanqError:
        pass


@FUZZ
@given(st.one_of(st.text(max_size=80), json_values.map(json.dumps)))
def test_features_metadata(tiny_classifier, tmp_path, text):
    import onnx

    from ganq.evaluate import FeatureNet
    from ganq.onnx_io import write_metadata

    m = onnx.load(str(tiny_classifier[0]))
    write_metadata(m, "ganq.features", text)
    onnx.save(m, str(tmp_path / "f.onnx"))
    _loads_or_ganq(FeatureNet, str(tmp_path / "f.onnx"))


@FUZZ
@given(st.binary(max_size=400))
def test_checkpoints(tmp_path, data):
    pytest.importorskip("torch")
    from ganq.train import checkpoint

    (tmp_path / "c.pt").write_bytes(data)
    _loads_or_ganq(checkpoint.load, tmp_path / "c.pt")


@FUZZ
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_sweep_cache_entry(tmp_path, data):
    import importlib

    sw = importlib.import_module("ganq.study.jobs")
    p = tmp_path / "c.npz"
    p.write_bytes(data)
    assert sw._read_cell(p, 4, "m") is None  # never trusted


@FUZZ
@given(st.one_of(st.text(max_size=80), json_values.map(json.dumps)))
def test_plan_files(tmp_path, text):
    from ganq.quantize.plan import read_plan_file

    (tmp_path / "p.json").write_text(text)
    _loads_or_ganq(read_plan_file, tmp_path / "p.json")


@pytest.mark.parametrize("change,msg", [({"latent_dim": 17}, "latent size 17"), ({"input_name": "q"}, "names input"),
                                        ({"output_name": "o"}, "names output"), ({"height": 30}, "the graph.s has shape"),
                                        ({"latent_dim": 10 ** 9}, "latent_dim must be an integer in"),
                                        ({"output_range": ["a", 1]}, "two numbers")])
def test_spec_that_does_not_match_the_graph(tiny_onnx, tmp_path, change, msg):
    import onnx

    from ganq.runtime import Generator
    from ganq.onnx_io import META_SPEC, read_metadata, write_metadata

    m = onnx.load(str(tiny_onnx))
    spec = json.loads(read_metadata(m)[META_SPEC])
    write_metadata(m, META_SPEC, json.dumps({**spec, **change}))
    onnx.save(m, str(tmp_path / "g.onnx"))
    with pytest.raises(GanqError, match=msg):
        Generator(tmp_path / "g.onnx")


def test_zip_bombs_and_huge_images_are_refused_within_memory(tmp_path):
    """A small zip whose member inflates to 2 GiB, a member whose header lies about its size, and an image of 30k x
    30k pixels: each refused in one line, in a subprocess whose address space is capped at 1.5 GiB."""
    import subprocess
    import sys

    big = tmp_path / "bomb.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("a/x.png", "w", force_zip64=True) as fh:
            chunk = b"\0" * 2 ** 24
            for _ in range(128):  # 2 GiB of zeros, about 2 MB compressed
                fh.write(chunk)
    from PIL import Image
    huge = tmp_path / "huge" / "a"
    huge.mkdir(parents=True)
    Image.new("L", (1, 1)).save(huge / "x.png")
    raw = bytearray((huge / "x.png").read_bytes())
    raw[16:24] = struct.pack(">II", 30000, 30000)  # the IHDR claims 30,000 x 30,000 (its CRC made right)
    import zlib
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    (huge / "x.png").write_bytes(bytes(raw))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20));"
            "from ganq.data.folder import read_image_folder; from ganq.errors import GanqError\n"
            "try:\n    read_image_folder(sys.argv[1], 8, 1)\nexcept GanqError as e:\n    print('refused:', e)")
    for target, msg in ((big, "inflates to"), (tmp_path / "huge", "pixels")):
        p = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "refused:" in p.stdout and msg in p.stdout, (p.stdout, p.stderr[-500:])


def test_idx_zero_dimension_beside_a_huge_one(tmp_path):
    """Found by the long fuzz run: a zero dimension makes the size check pass, numpy then refuses the shape."""
    from ganq.data.idx import read_idx

    p = tmp_path / "f"
    p.write_bytes(b"\x00\x00\x0b\x04\x00\x00\x00\x00\x00\x00\x00\x04\x14$%\r\xcb]E\xc5")
    with pytest.raises(GanqError, match="numpy cannot hold"):
        read_idx(p)


_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10 ** 6) | st.floats(allow_nan=True) |
                       st.text(max_size=8), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                                 max_size=4),
                       max_leaves=12)
_input = st.fixed_dictionaries(
    {"name": st.text(max_size=6) | st.integers(), "kind": st.sampled_from(["latent", "label", "noise", "image",
                                                                             "const", "wave", 3])},
    optional={"shape": st.lists(st.integers(-2, 70_000) | st.booleans(), max_size=4) | _values,
              "prior": st.sampled_from(["normal", "uniform", "truncated", "x"]) | _values,
              "truncation": st.floats(allow_nan=True) | _values, "classes": st.integers(-3, 200_000) | _values,
              "weights": st.lists(st.floats(allow_nan=True), max_size=4) | _values,
              "range": st.lists(st.floats(allow_nan=True), max_size=3) | _values,
              "layout": st.sampled_from(["NCHW", "NHWC", "CHW"]) | _values,
              "source": st.sampled_from(["", "random", "mnist"]) | _values,
              "value": st.lists(st.floats(allow_nan=True), max_size=4) | _values,
              "dtype": st.sampled_from(["", "int64", "int32", "float32", "float16"]) | _values,
              "colour": _values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=st.lists(_input, max_size=4) | _values, layout=st.sampled_from(["NCHW", "NHWC", "nchw"]))
def test_spec_input_fields_are_valid_or_one_error(inputs, layout):
    """Whatever a spec's inputs hold, GeneratorSpec takes them or raises one GanqError; what it takes round-trips
    through JSON and samples."""
    from ganq.onnx_io import sample_inputs
    from ganq.spec import GeneratorSpec

    d = {"latent_dim": 4, "channels": 1, "height": 2, "width": 2, "inputs": inputs, "output_layout": layout}
    try:
        spec = GeneratorSpec.from_dict(d)
    except GanqError:
        return
    assert GeneratorSpec.from_json(spec.to_json()) == spec
    if all(i.kind != "image" or i.source == "random" for i in spec.all_inputs):
        feed = sample_inputs(spec, 2, 0)
        assert set(feed) == {i.name for i in spec.all_inputs}
