"""onnxruntime sessions for ganq models: load, read the spec, generate images from seeded latents, bench.
The session recipe and model loading live in ganq.onnx_io; this package re-exports what its users need."""

from ganq.onnx_io import PROVIDERS, resolve_model, session, session_options
from ganq.runtime.generator import Generator, to_float, to_uint8

__all__ = ["PROVIDERS", "Generator", "resolve_model", "session", "session_options", "to_float", "to_uint8"]
