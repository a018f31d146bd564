"""The study layer: sweeps (settings and cache keys, jobs, executors: in process, local processes, Dask) and the
mixed-precision search that picks per-tensor bits by a GAN metric. report/ renders what it measures."""

from ganq.study.executors import Execution, run_sweep
from ganq.study.jobs import aggregate
from ganq.study.mixed import MixedOptions, OutOfReach, mixed_quantize
from ganq.study.run import sweep
from ganq.study.settings import (DEFAULT_BITS, ModelRef, SweepSettings, parse_bits, parse_method_spec, parse_models,
                                 split_methods)

__all__ = ["DEFAULT_BITS", "Execution", "ModelRef", "MixedOptions", "OutOfReach", "SweepSettings", "aggregate",
           "mixed_quantize", "parse_bits", "parse_method_spec", "parse_models", "run_sweep", "split_methods", "sweep"]
