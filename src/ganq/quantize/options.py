"""QuantizeOptions: everything `ganq quantize` takes, validated once, before any work."""

from __future__ import annotations

from dataclasses import dataclass, field

from ganq.errors import GanqError, check_range
from ganq.quantize.decoders import parse_granularity
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
    float_bits: int = 32           # 16 / 8: the floats that are not quantized weights stored smaller (float_bits)
    activations: int = 0           # 8 / 16: QDQ pairs on the activations (quantize.activations); 0: weights only
    act_calibration: str = "minmax"
    act_percentile: float = 99.99
    act_symmetric: bool = False
    keep_float: tuple = ()         # activation tensors (or first / last) that stay float
    act_tensor_bits: tuple = ()    # ((NAME | first | last, 8 | 16 | 32), ...): per activation tensor (32: float)
    float_tensor_bits: tuple = ()  # ((NAME, 32 | 16 | 8), ...): per float initializer, or per weight's decoder
    method_config: object = field(default=None, init=False, compare=False, repr=False)
    overrides: dict = field(default=None, init=False, compare=False, repr=False)
    act_overrides: tuple = field(default=(), init=False, compare=False, repr=False)  # the plan file's, then the CLI's
    float_overrides: tuple = field(default=(), init=False, compare=False, repr=False)  # the same for float bits

    def __post_init__(self):
        check_bits(self.bits)
        config = make_method(self.method, dict(self.method_opts))
        if self.bits != FLOAT_BITS:
            config.check_bits(self.bits)
        if self.format == "nbits" and parse_granularity(self.granularity)[0] != "group":
            raise GanqError("--format nbits needs --granularity group:G (MatMulNBits' block size)")
        if parse_granularity(self.granularity)[0] == "group" and config.rewrites_input:
            raise GanqError(f"method {self.method} splits channels; it has no group:G granularity (use channel)")
        FORMATS.get(self.format)
        check_range("--calibration", self.calibration, 1, MAX_CALIBRATION)
        check_range("--calibration-seed", self.calibration_seed, 0, 2 ** 31 - 1)
        conflicts_with(config, self.recalibrate_bn)
        from ganq.quantize.float_bits import FLOAT_BITS_CHOICES
        if self.float_bits not in FLOAT_BITS_CHOICES:
            raise GanqError(f"--float-bits must be 32, 16 or 8, got {self.float_bits!r}")
        self._check_activations(config)
        object.__setattr__(self, "method_config", config)
        object.__setattr__(self, "overrides", read_plan_file(self.plan_file) if self.plan_file else {})
        from ganq.quantize.plan import read_plan_activations
        acts = (read_plan_activations(self.plan_file) if self.plan_file else ()) + tuple(self.act_tensor_bits)
        if acts and not self.activations:
            raise GanqError("activation bits (--act-tensor-bits, or the plan's \"activations\") need --activations 8 "
                            "or 16")
        object.__setattr__(self, "act_overrides", acts)
        from ganq.quantize.plan import read_plan_floats
        floats = (read_plan_floats(self.plan_file) if self.plan_file else ()) + tuple(self.float_tensor_bits)
        if floats and self.activations:
            raise GanqError("--activations does not combine with per-tensor float bits (quantization scales stay "
                            "float32)")
        object.__setattr__(self, "float_overrides", floats)

    def _check_activations(self, config) -> None:
        from ganq.quantize.activations import ACTIVATION_BITS, CALIBRATIONS

        if not self.activations:
            if self.keep_float or self.act_tensor_bits or self.act_calibration != "minmax" or self.act_symmetric:
                raise GanqError("--keep-float, --act-tensor-bits, --act-calibration and --act-symmetric need "
                                "--activations 8 or 16")
            return
        if self.activations not in ACTIVATION_BITS:
            raise GanqError(f"--activations must be 8 or 16 (0: weights only), got {self.activations!r}")
        if self.act_calibration not in CALIBRATIONS:
            raise GanqError(f"--act-calibration must be one of {', '.join(CALIBRATIONS)}, got "
                            f"{self.act_calibration!r}")
        if not (0 < self.act_percentile <= 100):
            raise GanqError(f"--act-percentile must be in (0, 100], got {self.act_percentile!r}")
        if self.format != "int":
            raise GanqError(f"--activations needs --format int (integer kernels take DequantizeLinear weights); "
                            f"got --format {self.format}")
        if self.bits == FLOAT_BITS or self.bits > 8:
            raise GanqError(f"--activations needs weights of 2..8 bits (integer kernels); got --bits {self.bits}")
        if self.float_bits != 32:
            raise GanqError("--activations does not combine with --float-bits 16 (quantization scales stay float32)")
        if parse_granularity(self.granularity)[0] == "group":
            raise GanqError("--activations needs --granularity tensor or channel (integer kernels take no blocked "
                            "weights)")
        if not config.zero_centred:
            raise GanqError(f"--activations needs a symmetric weight grid (no offset, one zero point: what integer "
                            f"kernels take per channel); method {self.method} has none: use --method symmetric, or "
                            "gptq / adaround with --method-opt grid=symmetric")
        if not self.fold_bn:  # integer kernels have no BatchNorm: fold it into the weights first
            object.__setattr__(self, "fold_bn", True)
