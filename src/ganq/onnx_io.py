"""Model I/O, the base every stage stands on: loading and saving ONNX files, their ganq metadata, the one
onnxruntime session recipe, and inputs sampled from a generator's spec. numpy + onnx + onnxruntime; never torch.

    model = load_model("g.onnx")                  # external data checked (inside the model's folder) and read
    spec = read_spec(model, "g.onnx")             # the GeneratorSpec in metadata_props
    sess = session(model, threads=1, outputs=["h"])  # pruned to the nodes "h" needs
    z = sample_latents(spec, 64, seed=0)          # the same seed gives every bit width the same latents

Nothing else in ganq builds an InferenceSession or reads metadata_props.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ganq.errors import GanqError
from ganq.spec import GeneratorSpec

META_SPEC = "ganq.spec"
META_QUANT = "ganq.quant"
META_FEATURES = "ganq.features"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
OPTIMIZATION = ("disable", "basic", "extended", "all")
CALIBRATION_TAG = 0x63616C69  # mixed into the seed: calibration latents never equal evaluate's for any seed


# --- files ------------------------------------------------------------------------------------------------------

def resolve_model(ref: str | Path) -> Path:
    """A path, or zoo:NAME for a model shipped with ganq."""
    ref = str(ref)
    if ref.startswith("zoo:"):
        from ganq.zoo import path as zoo_path
        return zoo_path(ref[4:])
    return Path(ref)


def load_model(path: str | Path, external_data: bool = True):
    """Load an ONNX file; external data must lie inside the model's folder (and is read if external_data)."""
    import onnx

    path = Path(path)
    if path.is_dir():
        raise GanqError(f"{path}: is a folder, not an ONNX file")
    if not path.is_file():
        raise GanqError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends from protobuf
        raise GanqError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    if not model.graph.node:
        raise GanqError(f"{path}: not an ONNX model (empty or truncated: no graph nodes)")
    base = path.resolve().parent
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = dict((e.key, e.value) for e in t.external_data).get("location", "")
            target = (base / loc).resolve()
            if base not in target.parents:
                raise GanqError(f"{path}: external data of {t.name} points outside the model's folder ({loc})")
            if not target.is_file():
                raise GanqError(f"{path}: external data file {loc} of {t.name} is missing")
    if not external_data:
        return model
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise GanqError(f"{path}: cannot read its external data ({type(e).__name__})") from None
    return model


def save_model(model, path: str | Path, replace: bool = True) -> bytes:
    """Write model to path atomically (temporary name, then rename; replace=False: never over an existing file);
    returns the bytes written."""
    from ganq._io import write_bytes_atomic

    data = model.SerializeToString()
    write_bytes_atomic(path, data, replace)
    return data


# --- metadata ---------------------------------------------------------------------------------------------------

def read_metadata(model) -> dict[str, str]:
    """metadata_props of an onnx.ModelProto as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model, key: str, value: str) -> None:
    """Set one metadata_props entry of an onnx.ModelProto, replacing an existing one."""
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def copy_metadata(src, dst) -> None:
    """Replace dst's metadata_props with src's."""
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)


def read_spec(model, source: str = "model") -> GeneratorSpec:
    meta = read_metadata(model)
    if META_SPEC not in meta:
        raise GanqError(
            f"{source} has no '{META_SPEC}' metadata: it is not a ganq generator; "
            f"describe it first with `ganq spec {source} --latent-dim ...`"
        )
    return GeneratorSpec.from_json(meta[META_SPEC])


def check_spec(model, spec: GeneratorSpec, source: str = "model") -> None:
    """The spec against the graph's signature (an onnx.ModelProto): the latent input exists and is float
    [N, latent_dim], the image output exists; one GanqError naming `source` otherwise."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    ins = {i.name: i for i in model.graph.input if i.name not in inits}
    outs = {o.name for o in model.graph.output}
    if spec.input_name not in ins:
        raise GanqError(f"{source}: spec names input {spec.input_name!r}, the graph has {', '.join(ins) or 'none'}")
    tt = ins[spec.input_name].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise GanqError(f"{source}: input {spec.input_name} is "
                        f"{onnx.helper.tensor_dtype_to_string(tt.elem_type)}, not float32 latents")
    if len(dims) != 2 or dims[1] not in (None, spec.latent_dim):
        raise GanqError(f"{source}: spec says latent size {spec.latent_dim}, the graph's input {spec.input_name} "
                        f"has shape {dims}")
    if spec.output_name not in outs:
        raise GanqError(f"{source}: spec names output {spec.output_name!r}, the graph has {', '.join(outs)}")


def read_quant(model) -> dict | None:
    """The `ganq.quant` record of a quantized model (None for a float one)."""
    text = read_metadata(model).get(META_QUANT)
    return None if text is None else json.loads(text)


def describe(src, dst, *, latent_dim: int, latent: str = "normal", output_range=(-1.0, 1.0),
             input_name: str | None = None, output_name: str | None = None, dataset: str = "",
             arch: str = "", force: bool = False) -> GeneratorSpec:
    """Write a GeneratorSpec into a generator exported elsewhere (dst: src itself, or a new file, which may replace
    an existing one only with force), checking it against the graph's signature."""
    import onnx

    from ganq._io import check_out

    if Path(dst).resolve() != Path(src).resolve():
        check_out(dst, force, [src])

    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise GanqError(f"{src}: not an ONNX model ({type(e).__name__})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    outputs = list(model.graph.output)

    def pick(items, name, what, flag):
        if name is None:
            if len(items) != 1:
                raise GanqError(f"{src} has {len(items)} {what}s ({', '.join(i.name for i in items)}); name one "
                                f"with {flag}")
            return items[0]
        for i in items:
            if i.name == name:
                return i
        raise GanqError(f"{src} has no {what} {name!r}; it has {', '.join(i.name for i in items)}")

    zin, img = pick(inputs, input_name, "input", "--input-name"), pick(outputs, output_name, "output", "--output-name")
    zdims = [d.dim_value if d.HasField("dim_value") else None for d in zin.type.tensor_type.shape.dim]
    idims = [d.dim_value if d.HasField("dim_value") else None for d in img.type.tensor_type.shape.dim]
    if len(zdims) != 2 or zdims[1] not in (None, latent_dim):
        raise GanqError(f"input {zin.name} has shape {zdims}, not [N, {latent_dim}]")
    if len(idims) != 4 or any(d is None for d in idims[1:]):
        raise GanqError(f"output {img.name} has shape {idims}; ganq needs [N, C, H, W] with C, H, W fixed")
    spec = GeneratorSpec(latent_dim=latent_dim, channels=idims[1], height=idims[2], width=idims[3], latent=latent,
                         output_range=tuple(output_range), dataset=dataset, arch=arch, input_name=zin.name,
                         output_name=img.name)
    write_metadata(model, META_SPEC, spec.to_json())
    save_model(model, dst)
    return spec


# --- onnxruntime ------------------------------------------------------------------------------------------------

def check_threads(threads) -> None:
    top = 4 * (os.cpu_count() or 1)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= top):
        raise GanqError(f"--threads must be an integer in 1..{top} (4x this machine's cores), got {threads!r}; "
                        "leave it out for onnxruntime's default")


def session_options(threads: int | None = None, config: dict | None = None, optimization: str | None = None):
    """ganq's SessionOptions. Session options never change ganq's numbers: onnxruntime would otherwise rewrite
    DequantizeLinear -> MatMul into MatMulNBits with int8 activations, so `session.qdq_matmulnbits_accuracy_level`
    is pinned to "0". config: further session config entries; optimization: one of OPTIMIZATION (default: all)."""
    import onnxruntime as ort

    check_threads(threads)
    ort.disable_telemetry_events()  # no effect on Linux, where import already writes its device-id file (README)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimization is not None:
        if optimization not in OPTIMIZATION:
            raise GanqError(f"optimization must be one of {', '.join(OPTIMIZATION)}, got {optimization!r}")
        so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                       "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    so.log_severity_level = 3
    return so


def prune(graph, outputs: list[str]) -> None:
    """Keep only the nodes (and initializers) that the requested outputs depend on."""
    need = set(outputs)
    keep = []
    for node in reversed(graph.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs (If/Loop) read outer names too: keep what they mention
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    need.update(i for n in g.node for i in n.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in need]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def session(model, provider: str = "cpu", threads: int | None = None, *, outputs: list[str] | None = None,
            config: dict | None = None, optimization: str | None = None):
    """The one onnxruntime InferenceSession recipe. model: a path, serialized bytes or an onnx.ModelProto;
    provider cpu or cuda; outputs: make these tensors the graph's outputs and drop every node they do not need
    (onnxruntime runs every node otherwise, needed or not)."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise GanqError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise GanqError(f"provider {provider} is not available in this onnxruntime "
                        f"(has {', '.join(ort.get_available_providers())}); for cuda: pip install onnxruntime-gpu")
    so = session_options(threads, config, optimization)
    if outputs is not None:
        import onnx

        m = onnx.ModelProto()
        if isinstance(model, (bytes, onnx.ModelProto)):
            m.CopyFrom(model if isinstance(model, onnx.ModelProto) else onnx.ModelProto.FromString(model))
        else:
            m.CopyFrom(load_model(model))
        del m.graph.output[:]
        m.graph.output.extend([onnx.ValueInfoProto(name=o) for o in outputs])
        prune(m.graph, outputs)
        model = m
    label = "model"
    if not isinstance(model, bytes) and not hasattr(model, "SerializeToString"):
        if not Path(model).is_file():
            raise GanqError(f"{model}: no such file")
        label, src = str(model), str(model)
    else:
        src = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(src, so, providers=[name])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise GanqError(f"{label}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None


def run(model, feed: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    """Run model once on feed (every output, or `outputs`), on the CPU with the default threads."""
    return session(model, outputs=outputs).run(outputs, feed)


# --- inputs -----------------------------------------------------------------------------------------------------

def _draw(rng, prior: str, n: int, dim: int) -> np.ndarray:
    if prior == "uniform":
        return rng.uniform(-1, 1, (n, dim)).astype(np.float32)
    return rng.standard_normal((n, dim)).astype(np.float32)


def sample_latents(spec: GeneratorSpec, n: int, seed: int, calibration: bool = False) -> np.ndarray:
    """float32 [n, latent_dim] from the spec's prior. Evaluation latents come from default_rng(seed), so the same
    seed gives every bit width the same latents; calibration latents from their own stream (seed mixed with
    CALIBRATION_TAG), so they never equal an evaluation's for any seed."""
    rng = np.random.default_rng([CALIBRATION_TAG, seed] if calibration else seed)
    return _draw(rng, spec.latent, n, spec.latent_dim)


def sample_inputs(spec: GeneratorSpec, n: int, seed: int, calibration: bool = False) -> dict[str, np.ndarray]:
    """The feed of n generator calls: every input the spec declares, by name."""
    return {spec.input_name: sample_latents(spec, n, seed, calibration)}


def random_feed(model, seed: int = 0) -> dict | None:
    """Random inputs for every graph input of an onnx.ModelProto (dynamic dims = 2), or None if one is not float:
    for comparing two versions of a graph, not for generating images."""
    import onnx

    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            return None
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in tt.shape.dim]
        feed[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


__all__ = ["META_SPEC", "META_QUANT", "META_FEATURES", "PROVIDERS", "resolve_model", "load_model", "save_model",
           "read_metadata", "write_metadata", "copy_metadata", "read_spec", "read_quant", "describe",
           "session_options", "session", "run", "prune", "sample_latents", "sample_inputs", "random_feed"]
