"""Decode once or per call (issue 24): the runtime folds the weights' decoders when its session is made; the
outputs equal the per-call decode's for every format (torch-free)."""

import numpy as np
import pytest

from ganq.quantize import QuantizeOptions, quantize_file
from ganq.runtime import Generator


@pytest.mark.parametrize("fmt,bits,method", [("fake", 4, "minmax"), ("int", 4, "minmax"), ("int", 3, "kmeans"),
                                             ("int", 8, "mse"), ("packed", 3, "minmax"), ("packed", 2, "kmeans")])
def test_decode_once_equals_decode_per_call(tiny_onnx, tmp_path, fmt, bits, method):
    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, QuantizeOptions(bits=bits, method=method, granularity="channel", format=fmt))
    once, per = Generator(q), Generator(q, decode="per-call")
    assert once.decode == "once" and per.decode == "per-call"
    z = once.latents(17, 3)
    a, b = once.run(z), per.run(z)
    assert np.abs(a - b).max() <= 1e-6
    assert np.array_equal(once.generate(9, 1), per.generate(9, 1))


def test_bad_decode_mode_is_one_line(tiny_onnx):
    from ganq.errors import GanqError

    with pytest.raises(GanqError, match="--decode must be once or per-call"):
        Generator(tiny_onnx, decode="lazy")
