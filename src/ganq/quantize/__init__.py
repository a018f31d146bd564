"""Quantize the weight initializers of an ONNX generator (pure numpy + onnx; never torch).

    model, report = quantize_model(onnx.load("g.onnx"), QuantizeOptions(bits=4, method="mse", format="packed"))

quantize_model runs named steps (quantize.pipeline): prepare -> plan -> solve -> correct -> emit -> record. The op
table (quantize.ops) says what every weight op holds; methods (quantize.methods) and formats (quantize.formats)
are registries. This package only re-exports.
"""

from ganq.onnx_io import load_model
from ganq.quantize.decoders import Codebook
from ganq.quantize.fold_bn import fold_batchnorm
from ganq.quantize.formats import FORMATS
from ganq.quantize.methods import METHODS
from ganq.quantize.options import MAX_CALIBRATION, TARGET_OPSET, QuantizeOptions
from ganq.quantize.pipeline import quantize_file, quantize_model
from ganq.quantize.plan import FLOAT_BITS, Plan, make_plan
from ganq.quantize.prepare import legacy_inputs, upgrade_opset

__all__ = ["QuantizeOptions", "quantize_model", "quantize_file", "load_model", "fold_batchnorm", "FORMATS",
           "METHODS", "FLOAT_BITS", "Plan", "make_plan", "Codebook", "legacy_inputs", "upgrade_opset",
           "TARGET_OPSET", "MAX_CALIBRATION"]
