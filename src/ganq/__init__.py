"""ganq: post-training quantization of GANs, deployed through ONNX."""

__version__ = "0.1.0"
