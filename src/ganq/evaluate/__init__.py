"""Evaluate generators in onnxruntime: Inception Score, k-NN precision/recall, realism, FID, KID,
density/coverage, on the features of an ONNX feature network. Torch-free.

Conventions (see metrics.py): (fake, real) order; IS as torch-fidelity >= 0.4.0; precision/recall inclusive (<=)
unless strict; realism as the paper unless 'official'; density/coverage as prdc; FID in float64; KID as
torch-fidelity (cubic polynomial kernel, 100 subsets of 1000, RandomState(2020)).
"""

from ganq.evaluate.features import FeatureNet
from ganq.evaluate.options import EvalOptions
from ganq.evaluate.run import (check_request, evaluate, load_features, measure, metrics_from_arrays,
                               metrics_from_files, score, score_steps)
from ganq.evaluate.sources import (FEATURE_KINDS, FeatureCache, converted_path, default_features, real_images,
                                   resolve_features)

__all__ = ["EvalOptions", "FEATURE_KINDS", "FeatureCache", "FeatureNet", "converted_path", "default_features",
           "evaluate", "check_request", "load_features", "measure", "metrics_from_arrays", "metrics_from_files", "real_images", "resolve_features", "score",
           "score_steps"]
