"""QuantizeOptions: everything `ganq quantize` takes, validated once, before any work."""

from __future__ import annotations

from dataclasses import dataclass, field

from ganq.errors import GanqError, check_range
from ganq.quantize.decoders import GRANULARITIES
from ganq.quantize.formats import FORMATS
from ganq.quantize.methods import make_method
from ganq.quantize.plan import FLOAT_BITS, check_bits, read_plan_file

TARGET_OPSET = 21  # UINT4 and per-axis DequantizeLinear; what `int` and `packed` want
MAX_CALIBRATION = 1_000_000


def conflicts_with(config, recalibrate_bn: bool) -> None:
    """A method's declared conflicts with quantize options (OCS: --recalibrate-bn), as one GanqError."""
    if recalibrate_bn and "recalibrate_bn" in config.conflicts:
        raise GanqError(f"--recalibrate-bn does not combine with method {config.name} "
                        f"({config.conflicts['recalibrate_bn']})")


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything `ganq quantize` takes, validated once. method_opts: ((key, value), ...) for the method's config;
    tensor_bits: ((NAME | first | last, bits), ...); plan_file: a JSON plan with per-tensor overrides."""

    bits: int
    method: str = "minmax"
    method_opts: tuple = ()
    granularity: str = "tensor"
    format: str = "fake"
    fold_bn: bool = False
    include_bias: bool = False
    tensor_bits: tuple = ()
    plan_file: str | None = None
    keep_overridable: bool = False
    upgrade_opset: bool = True
    calibration: int = 1024
    calibration_seed: int = 0
    recalibrate_bn: bool = False
    bn_into_decoder: bool = False  # fold a following BatchNorm into the quantized layer's decoder (quantize.bn_decoder)
    float_bits: int = 32           # 16: the floats that are not quantized weights stored as float16 (float_bits)
    method_config: object = field(default=None, init=False, compare=False, repr=False)
    overrides: dict = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        check_bits(self.bits)
        config = make_method(self.method, dict(self.method_opts))
        if self.bits != FLOAT_BITS:
            config.check_bits(self.bits)
        if self.granularity not in GRANULARITIES:
            raise GanqError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        FORMATS.get(self.format)
        check_range("--calibration", self.calibration, 1, MAX_CALIBRATION)
        check_range("--calibration-seed", self.calibration_seed, 0, 2 ** 31 - 1)
        conflicts_with(config, self.recalibrate_bn)
        from ganq.quantize.float_bits import FLOAT_BITS_CHOICES
        if self.float_bits not in FLOAT_BITS_CHOICES:
            raise GanqError(f"--float-bits must be 32 or 16, got {self.float_bits!r}")
        object.__setattr__(self, "method_config", config)
        object.__setattr__(self, "overrides", read_plan_file(self.plan_file) if self.plan_file else {})
