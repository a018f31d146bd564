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
# xnnpack: integer kernels on ARM and x86 (a build of onnxruntime that has it, e.g. the Android package)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "xnnpack": "XnnpackExecutionProvider"}
PROVIDER_HINT = {"cuda": "pip install onnxruntime-gpu", "xnnpack": "a build with --use_xnnpack (not on PyPI for x86)"}
OPTIMIZATION = ("disable", "basic", "extended", "all")
# how a session handles the DequantizeLinear of weight-only files: "once" folds it into float32 weights when the
# session is made (onnxruntime keeps QDQ nodes unless session.disable_quant_qdq=1), "per-call" decodes the weights on
# every run (less memory: the float weights are never held). Packed files' decoders are constant-folded either way.
# A file with quantized activations (--activations) runs "integer": onnxruntime's QDQ fusions on, so its QDQ pairs
# become integer kernels (QLinearConv, QLinearMatMul, ...), what an accelerator runs; "once" would keep them as float
# fake quantization (the numbers of onnx.reference, not of the device).
DECODE = {"once": {"session.disable_quant_qdq": "1"}, "per-call": {}, "integer": {}}
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
            f"describe it first with `ganq spec {source} --write`"
        )
    return GeneratorSpec.from_json(meta[META_SPEC])


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _elem(vi) -> str:
    import onnx

    t = vi.type.tensor_type.elem_type
    return onnx.helper.tensor_dtype_to_np_dtype(t).name if t else "undefined"


def graph_inputs(model) -> list:
    """The graph inputs that are not initializers (what a caller feeds)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def check_spec(model, spec: GeneratorSpec, source: str = "model") -> None:
    """The spec against the graph's signature (an onnx.ModelProto): every input the spec declares exists with its
    element type and shape (the batch dimension may be fixed), every graph input is declared, the image output
    exists with a shape that agrees; one GanqError naming `source` otherwise."""
    ins = {i.name: i for i in graph_inputs(model)}
    outs = {o.name: o for o in model.graph.output}
    declared = {i.name for i in spec.all_inputs}
    for inp in spec.all_inputs:
        if inp.name not in ins:
            raise GanqError(f"{source}: spec names input {inp.name!r}, the graph has {', '.join(ins) or 'none'}")
        vi = ins[inp.name]
        dims, elem = _dims(vi), _elem(vi)
        if elem != inp.element_type:
            what = "latents" if inp.kind == "latent" else f"a {inp.kind} input"
            raise GanqError(f"{source}: input {inp.name} is {elem}, not {inp.element_type} {what}")
        want = list(inp.shape) if not inp.batched else [None, *inp.shape]
        if len(dims) != len(want) or any(d is not None and w is not None and d != w for d, w in zip(dims, want)):
            if inp.kind == "latent" and inp.name == spec.input_name:
                raise GanqError(f"{source}: spec says latent size {spec.latent_dim}, the graph's input {inp.name} "
                                f"has shape {dims}")
            raise GanqError(f"{source}: spec says input {inp.name} ({inp.kind}) has shape "
                            f"{['N', *inp.shape] if inp.batched else list(inp.shape)}, the graph has {dims}")
    extra = [n for n in ins if n not in declared]
    if extra:
        raise GanqError(f"{source}: graph input {extra[0]} is not in the spec; describe it with "
                        f"`ganq spec {source} --input {extra[0]}=KIND`")
    batches = {_dims(ins[i.name])[0] for i in spec.all_inputs if i.batched} - {None}
    if len(batches) > 1:
        raise GanqError(f"{source}: its inputs have different fixed batch sizes {sorted(batches)}")
    if spec.output_name not in outs:
        raise GanqError(f"{source}: spec names output {spec.output_name!r}, the graph has {', '.join(outs)}")
    dims = _dims(outs[spec.output_name])
    c, h, w = spec.image_shape
    want = [None, c, h, w] if spec.output_layout == "NCHW" else [None, h, w, c]
    if dims and (len(dims) != 4 or any(d is not None and x is not None and d != x for d, x in zip(dims, want))):
        raise GanqError(f"{source}: spec says output {spec.output_name} is {spec.output_layout} "
                        f"{'x'.join(map(str, spec.image_shape))} (CxHxW), the graph's has shape {dims}")


def fixed_batch(model, spec: GeneratorSpec) -> int | None:
    """The batch size the graph fixes for its batched inputs (None: symbolic)."""
    ins = {i.name: i for i in graph_inputs(model)}
    for inp in spec.all_inputs:
        if inp.batched and inp.name in ins:
            d = _dims(ins[inp.name])
            if d and d[0] is not None:
                return d[0]
    return None


def _label_classes(model, name: str) -> int | None:
    """The row count of the embedding table (a Gather's initializer) that label input `name` indexes, through
    Cast/Reshape/Unsqueeze/Squeeze/Identity."""
    inits = {i.name: i for i in model.graph.initializer}
    frontier, seen = [name], set()
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        for n in model.graph.node:
            if t not in n.input:
                continue
            if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t and n.input[0] in inits:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                return int(inits[n.input[0]].dims[axis])
            if n.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity") and n.input[0] == t:
                frontier.append(n.output[0])
    return None


def infer_inputs(model, given: dict[str, dict], latent_dim: int | None, latent: str, input_name: str | None,
                 source: str) -> list[dict]:
    """The spec's inputs for a graph: `given` (name -> fields, from `ganq spec --input`) first, the rest by their
    type and shape: float [N, d] or [N, d, 1, 1] a latent, int [N] a label (its classes from the embedding table it
    indexes), float [N, C, H, W] named *noise* (or with C not 1 or 3) noise, else an image input (which needs its
    source). One GanqError naming what to give when a graph input cannot be told."""
    ins = graph_inputs(model)
    names = [i.name for i in ins]
    for n in given:
        if n not in names:
            raise GanqError(f"{source} has no input {n!r}; it has {', '.join(names)}")
    if input_name is not None and input_name not in names:
        raise GanqError(f"{source} has no input {input_name!r}; it has {', '.join(names)}")
    out = []
    latent_seen = False
    for vi in ins:
        dims, elem = _dims(vi), _elem(vi)
        after = dims[1:]
        d = dict(given.get(vi.name, {}))
        d["name"] = vi.name
        kind = d.get("kind")
        if kind is None:
            if input_name is not None and vi.name == input_name:
                kind = "latent"
            elif elem in ("int64", "int32") and len(dims) == 1:
                kind = "label"
            elif elem == "float32" and (len(dims) == 2 or (len(dims) == 4 and after[1:] == [1, 1])):
                if input_name is not None or latent_seen:
                    raise GanqError(f"{source} has several latent-like inputs ({', '.join(names)}); name the latent "
                                    "with --input-name and describe the others with --input NAME=KIND")
                kind = "latent"
            elif elem == "float32" and len(dims) == 4:
                low = vi.name.lower()
                kind = "noise" if "noise" in low or after[0] not in (1, 3) else "image"
            elif elem == "float32" and len(dims) >= 2:
                kind = "noise"
            if kind is None:
                raise GanqError(f"{source}: cannot tell what input {vi.name} ({elem} {dims}) is; describe it with "
                                f"--input {vi.name}=KIND (latent, label, noise, image or const)")
        d["kind"] = kind
        if kind == "latent":
            latent_seen = True
            if "shape" not in d:
                if len(dims) not in (2, 4):
                    raise GanqError(f"{source}: input {vi.name} has shape {dims}, not a latent [N, d] or "
                                    "[N, d, 1, 1]")
                size = dims[1]
                if latent_dim is not None and size is not None and size != latent_dim:
                    raise GanqError(f"input {vi.name} has shape {dims}, not [N, {latent_dim}]")
                size = size if size is not None else latent_dim
                if size is None:
                    raise GanqError(f"{source}: input {vi.name} has a symbolic size {dims}; give --latent-dim")
                d["shape"] = [size] + ([1, 1] if len(dims) == 4 else [])
            d.setdefault("prior", latent)
        elif kind == "label":
            if "classes" not in d:
                classes = _label_classes(model, vi.name)
                if classes is None:
                    raise GanqError(f"{source}: label input {vi.name} indexes no embedding table ganq can see; give "
                                    f"its classes with --input {vi.name}=label,classes=N")
                d["classes"] = classes
            if elem != "int64":
                d.setdefault("dtype", elem)
        elif kind in ("noise", "image", "const") and "shape" not in d:
            shape = after if kind != "const" else dims
            if any(x is None for x in shape):
                raise GanqError(f"{source}: input {vi.name} has symbolic dimensions {dims}; give its shape with "
                                f"--input {vi.name}={kind},shape=" + "x".join("D" for _ in shape))
            d["shape"] = shape
            if kind == "const" and elem != "float32":
                d.setdefault("dtype", elem)
        if kind == "image":
            d.setdefault("layout", "NHWC" if d["shape"] and d["shape"][-1] in (1, 3) and d["shape"][0] not in (1, 3)
                         else "NCHW")
            if not d.get("source"):
                raise GanqError(f"{source}: image input {vi.name} needs the images it is fed; give "
                                f"--input {vi.name}=image,source=DATASET (or folder:PATH, or random)")
        out.append(d)
    return out


def default_decode(model, decode: str = "once") -> str:
    """The decode a session of this file uses: "integer" for a file with quantized activations (any QuantizeLinear:
    ganq's --activations or another tool's QDQ file) asked "once"."""
    quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    return "integer" if decode == "once" and quantized else decode


def read_quant(model) -> dict | None:
    """The `ganq.quant` record of a quantized model (None for a float one)."""
    text = read_metadata(model).get(META_QUANT)
    return None if text is None else json.loads(text)


def describe(src, dst, *, latent_dim: int | None = None, latent: str = "normal", output_range=(-1.0, 1.0),
             input_name: str | None = None, output_name: str | None = None, dataset: str = "",
             arch: str = "", force: bool = False, inputs: dict[str, dict] | None = None,
             output_layout: str | None = None, image_size: tuple[int, int] | None = None) -> GeneratorSpec:
    """Write a GeneratorSpec into a generator exported elsewhere (dst: src itself, or a new file, which may replace
    an existing one only with force), checking it against the graph's signature. inputs: name -> InputSpec fields
    for inputs ganq cannot tell by themselves (infer_inputs); an output whose size is symbolic is measured by
    running the model once (or given as image_size (H, W))."""
    from ganq._io import check_out
    from ganq.spec import InputSpec

    if Path(dst).resolve() != Path(src).resolve():
        check_out(dst, force, [src])
    model = load_model(src, external_data=False)  # external data stays where it is (read only to run the model)
    outputs = list(model.graph.output)
    if output_name is None:
        if len(outputs) != 1:
            raise GanqError(f"{src} has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}); name one "
                            "with --output-name")
        img = outputs[0]
    else:
        img = next((o for o in outputs if o.name == output_name), None)
        if img is None:
            raise GanqError(f"{src} has no output {output_name!r}; it has {', '.join(o.name for o in outputs)}")
    fields = infer_inputs(model, inputs or {}, latent_dim, latent, input_name, str(src))
    items = tuple(InputSpec.from_dict(f) for f in fields)
    legacy = (len(items) == 1 and items[0].kind == "latent" and items[0].shape == (items[0].shape[0],)
              and not items[0].dtype and items[0].truncation == 2.0)
    idims = _dims(img)
    if len(idims) != 4:
        raise GanqError(f"output {img.name} has shape {idims}; ganq needs an image batch [N, C, H, W] or [N, H, W, C]")
    layout = output_layout or ("NHWC" if idims[3] in (1, 3) and idims[1] not in (1, 3) else "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise GanqError(f"--output-layout must be NCHW or NHWC, got {layout!r}")
    chw = idims[1:] if layout == "NCHW" else [idims[3], idims[1], idims[2]]
    if image_size is not None:
        h, w = image_size
        if chw[1] not in (None, h) or chw[2] not in (None, w):
            raise GanqError(f"--image-size {h}x{w} disagrees with output {img.name}'s shape {idims}")
        chw = [chw[0], h, w]
    if any(d is None for d in chw):
        probe = GeneratorSpec(latent_dim=1, channels=1, height=1, width=1, inputs=items, input_name="x")
        feed = probe_inputs(probe, fixed_batch(model, probe) or 1)
        try:
            (y,) = run(load_model(src), feed, [img.name])
        except GanqError as e:
            raise GanqError(f"output {img.name} has symbolic dimensions {idims} and running the model once to "
                            f"measure them failed ({e}); give --image-size HxW") from None
        if y.ndim != 4:
            raise GanqError(f"output {img.name} is {list(y.shape)} when run, not an image batch")
        got = list(y.shape[1:]) if layout == "NCHW" else [y.shape[3], y.shape[1], y.shape[2]]
        chw = [c if c is not None else g for c, g in zip(chw, got)]
    if chw[0] not in (1, 3):
        raise GanqError(f"output {img.name} has shape {idims}: {chw[0]} channels ({layout}); ganq needs 1 or 3 "
                        "(--output-layout if the channels are last)")
    lat = next((i for i in items if i.kind == "latent"), None)
    spec = GeneratorSpec(latent_dim=lat.shape[0] if lat else 0, channels=chw[0], height=chw[1], width=chw[2],
                         latent=lat.prior if lat else "normal", output_range=tuple(output_range), dataset=dataset,
                         arch=arch, input_name=lat.name if lat else items[0].name, output_name=img.name,
                         inputs=() if legacy else items, output_layout=layout)
    check_spec(model, spec, str(src))
    if _has_external(model) and Path(dst).resolve().parent != Path(src).resolve().parent:
        model = load_model(src)  # another folder: the data goes inline, its references would not resolve there
    write_metadata(model, META_SPEC, spec.to_json())
    save_model(model, dst)
    return spec


def _has_external(model) -> bool:
    import onnx

    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)


# --- onnxruntime ------------------------------------------------------------------------------------------------

def check_threads(threads) -> None:
    top = 4 * (os.cpu_count() or 1)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= top):
        raise GanqError(f"--threads must be an integer in 1..{top} (4x this machine's cores), got {threads!r}; "
                        "leave it out for onnxruntime's default")


def session_options(threads: int | None = None, config: dict | None = None, optimization: str | None = None,
                    quiet: bool = False):
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
    so.log_severity_level = 4 if quiet else 3
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


def check_provider(provider: str) -> None:
    """One line when the provider is unknown, or missing from the installed onnxruntime."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise GanqError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if PROVIDERS[provider] not in ort.get_available_providers():
        raise GanqError(f"provider {provider} is not available in this onnxruntime (has "
                        f"{', '.join(ort.get_available_providers())}); for {provider}: {PROVIDER_HINT.get(provider, '')}")


def session(model, provider: str = "cpu", threads: int | None = None, *, outputs: list[str] | None = None,
            config: dict | None = None, optimization: str | None = None, quiet: bool = False,
            decode: str | None = None, save_optimized: str | Path | None = None):
    """The one onnxruntime InferenceSession recipe. model: a path, serialized bytes or an onnx.ModelProto;
    provider cpu, cuda or xnnpack; outputs: make these tensors the graph's outputs and drop every node they do not need
    (onnxruntime runs every node otherwise, needed or not); save_optimized: where onnxruntime writes the graph as
    optimised (export-ort's decoded weights)."""
    import onnxruntime as ort

    check_provider(provider)
    name = PROVIDERS[provider]
    if decode is not None:
        if decode not in DECODE:
            raise GanqError(f"--decode must be {' or '.join(DECODE)}, got {decode!r}")
        config = {**DECODE[decode], **(config or {})}
    so = session_options(threads, config, optimization, quiet)
    if save_optimized is not None:
        so.optimized_model_filepath = str(save_optimized)
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
        # the CPU provider after another runs what that one has no kernel for (XNNPACK has few)
        return ort.InferenceSession(src, so, providers=[name] + ([PROVIDERS["cpu"]] if provider != "cpu" else []))
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise GanqError(f"{label}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None


def run(model, feed: dict, outputs: list[str] | None = None, quiet: bool = False) -> list[np.ndarray]:
    """Run model once on feed (every output, or `outputs`), on the CPU with the default threads (quiet: onnxruntime
    logs nothing, for runs that are allowed to fail)."""
    return _run(session(model, outputs=outputs, quiet=quiet), outputs, feed)


# --- inputs -----------------------------------------------------------------------------------------------------

def _draw(rng, prior: str, n: int, dims: tuple, truncation: float = 2.0) -> np.ndarray:
    shape = (n, *dims)
    if prior == "uniform":
        return rng.uniform(-1, 1, shape).astype(np.float32)
    z = rng.standard_normal(shape)
    if prior == "truncated":  # resample what falls outside +-truncation (the truncation trick's prior)
        bad = np.abs(z) > truncation
        while bad.any():
            z[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > truncation
    return z.astype(np.float32)


def sample_latents(spec: GeneratorSpec, n: int, seed: int, calibration: bool = False) -> np.ndarray:
    """float32 [n, *latent shape] from the spec's prior. Evaluation latents come from default_rng(seed), so the
    same seed gives every bit width the same latents; calibration latents from their own stream (seed mixed with
    CALIBRATION_TAG), so they never equal an evaluation's for any seed."""
    lat = spec.latent_input
    if lat is None:
        raise GanqError("this generator has no latent input")
    rng = np.random.default_rng([CALIBRATION_TAG, seed] if calibration else seed)
    return _draw(rng, lat.prior, n, lat.shape, lat.truncation)


_IMAGES: dict = {}


def source_images(source: str, split: str, data_root=None) -> np.ndarray:
    """uint8 [N, H, W, C] images of an image input's source (a data set name or folder:PATH), read once per
    process."""
    from ganq import data

    key = (source, split, str(data_root))
    if key not in _IMAGES:
        try:
            ds = data.load(source, split, data_root)
        except GanqError as e:
            if split == "train":  # a data set present with its test split only still feeds calibration
                try:
                    ds = data.load(source, "test", data_root)
                except GanqError:
                    raise e from None
                note_once(f"image input source {source} has no train split here; calibration draws from its test "
                          "split, the one evaluation draws from too")
            else:
                raise
        _IMAGES[key] = ds.images
    return _IMAGES[key]


def _draw_images(inp, rng, n: int, calibration: bool, data_root) -> np.ndarray:
    from ganq.data.resize import resize_images

    lo, hi = inp.range
    if inp.source == "random":
        return rng.uniform(lo, hi, (n, *inp.shape)).astype(np.float32)
    pool = source_images(inp.source, "train" if calibration else "test", data_root)
    idx = _pick(pool, n, rng)
    c, h, w = inp.image_hw
    u8 = resize_images(pool[idx], h, w, c)
    x = (u8.astype(np.float32) / np.float32(255.0)) * np.float32(hi - lo) + np.float32(lo)
    return np.ascontiguousarray(x if inp.layout == "NHWC" else x.transpose(0, 3, 1, 2))


def _pick(pool: np.ndarray, n: int, rng) -> np.ndarray:
    """The source images an image input's n draws use (with replacement only when the pool is smaller)."""
    return rng.choice(len(pool), n, replace=n > len(pool))


def ground_truth(spec: GeneratorSpec, n: int, seed: int, data_root=None) -> tuple[np.ndarray, np.ndarray]:
    """(targets, inputs): the source images that the image input of sample_inputs(spec, n, seed) was made from, at
    the output's size, and the inputs themselves, both uint8 [n, H, W, C]: the ground truth of a super-resolution
    (or denoising) generator and the low-resolution images a baseline upsamples. Replays sample_inputs' draw."""
    from ganq.data.resize import resize_images

    found = [(k, i) for k, i in enumerate(spec.all_inputs) if i.kind == "image"]
    if len(found) != 1:
        raise GanqError(f"ground truth needs a generator with one image input; this one has {len(found)}")
    k, inp = found[0]
    if inp.source == "random":
        raise GanqError(f"image input {inp.name} draws random noise (source random): it has no ground truth; give "
                        f"it a data set source")
    pool = source_images(inp.source, "test", data_root)
    idx = _pick(pool, n, np.random.default_rng([seed, k + 1]))  # sample_inputs' stream for input k
    c, h, w = inp.image_hw
    return (resize_images(pool[idx], spec.height, spec.width, spec.channels),
            resize_images(pool[idx], h, w, c))


def draw_input(inp, n: int, rng, calibration: bool = False, data_root=None) -> np.ndarray:
    """n values of one InputSpec (a constant: its value, unbatched)."""
    if inp.kind == "latent":
        return _draw(rng, inp.prior, n, inp.shape, inp.truncation)
    if inp.kind == "label":
        p = None
        if inp.weights:
            w = np.asarray(inp.weights, np.float64)
            p = w / w.sum()
        return rng.choice(inp.classes, n, p=p).astype(np.dtype(inp.element_type))
    if inp.kind == "noise":
        return rng.standard_normal((n, *inp.shape)).astype(np.float32)
    if inp.kind == "image":
        return _draw_images(inp, rng, n, calibration, data_root)
    return np.asarray(inp.value, np.dtype(inp.element_type)).reshape(inp.shape)


def sample_inputs(spec: GeneratorSpec, n: int, seed: int, calibration: bool = False, data_root=None,
                  labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The feed of n generator calls: every input the spec declares, by name. The first latent draws exactly as
    sample_latents; every other input from its own stream (the seed and the input's place), so adding an input
    never changes the latents. labels: the label input's values instead of drawn ones (per-class evaluation)."""
    feed = {}
    for k, inp in enumerate(spec.all_inputs):
        if inp.kind == "latent" and inp.name == spec.input_name:
            feed[inp.name] = sample_latents(spec, n, seed, calibration)
            continue
        if inp.kind == "label" and labels is not None:
            feed[inp.name] = np.asarray(labels, np.dtype(inp.element_type))[:n]
            continue
        rng = np.random.default_rng([CALIBRATION_TAG, seed, k + 1] if calibration else [seed, k + 1])
        feed[inp.name] = draw_input(inp, n, rng, calibration, data_root)
    return feed


def probe_inputs(spec: GeneratorSpec, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A feed of n calls for checking a graph (image inputs uniform in their range, no data set read)."""
    from dataclasses import replace

    rng = np.random.default_rng([seed, 0x70726F62])
    return {inp.name: draw_input(replace(inp, source="random") if inp.kind == "image" else inp, n, rng)
            for inp in spec.all_inputs}


def slice_feed(spec: GeneratorSpec, feed: dict, start: int, stop: int) -> dict:
    """Rows start:stop of every batched input (constants as they are)."""
    batched = {i.name for i in spec.all_inputs if i.batched}
    return {k: (v[start:stop] if k in batched else v) for k, v in feed.items()}


def feed_size(spec: GeneratorSpec, feed: dict) -> int:
    return len(feed[next(i.name for i in spec.all_inputs if i.batched)])


# --- fixed batch ------------------------------------------------------------------------------------------------

_SAID: set = set()


def note_once(message: str) -> None:
    """One note line on stderr, said once per process."""
    import sys

    if message not in _SAID:
        _SAID.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)


def symbolic_batch(model, spec: GeneratorSpec, fixed: int) -> None:
    """Make the fixed batch dimension of the batched inputs and of the outputs symbolic, in place (value_info,
    whose shapes say the fixed batch, dropped)."""
    batched = {i.name for i in spec.all_inputs if i.batched}
    for vi in [i for i in model.graph.input if i.name in batched] + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = "N"
    del model.graph.value_info[:]


def dynamic_batch(model, spec: GeneratorSpec, fixed: int):
    """A copy of a fixed-batch model with a symbolic batch dimension, or None where the graph does not allow it
    (checked by running both: the copy on two batches at once must give what the original gives on each)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    symbolic_batch(m, spec, fixed)
    batched = {i.name for i in spec.all_inputs if i.batched}
    a, b = probe_inputs(spec, fixed, 1), probe_inputs(spec, fixed, 2)
    both = {k: (np.concatenate([a[k], b[k]]) if k in batched else a[k]) for k in a}
    try:
        ref = np.concatenate([run(model, a, [spec.output_name], quiet=True)[0],
                              run(model, b, [spec.output_name], quiet=True)[0]])
        got = run(m, both, [spec.output_name], quiet=True)[0]
    except Exception:  # onnxruntime's Fail (a Reshape that bakes the batch in) or a session that cannot load
        return None
    if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-4, atol=1e-5):
        return None
    return m


def batch_mode(model, spec: GeneratorSpec, source: str = "model"):
    """(the model to build sessions from, the batch it must be run in or None). A model exported with a fixed batch
    gets a symbolic one where the graph allows it, else runs in batches of its size; said once on stderr."""
    fixed = fixed_batch(model, spec)
    if fixed is None:
        return model, None
    dyn = dynamic_batch(model, spec, fixed)
    if dyn is not None:
        note_once(f"{source} was exported with a fixed batch of {fixed}; ganq runs it with a symbolic batch "
                  "(checked: the same outputs)")
        return dyn, None
    note_once(f"{source} was exported with a fixed batch of {fixed} that its graph depends on; ganq runs it in "
              f"batches of {fixed}")
    return model, fixed


def run_batched(sess, outputs: list[str], spec: GeneratorSpec, feed: dict, batch: int, fixed: int | None):
    """Yield sess.run(outputs, ...) over the feed in batches (of `fixed` when the graph fixes it: the last batch
    padded by repeating its rows, its outputs cut back)."""
    n = feed_size(spec, feed)
    step = fixed or batch
    for i in range(0, n, step):
        part = slice_feed(spec, feed, i, min(n, i + step))
        m = feed_size(spec, part)
        if fixed and m < fixed:
            batched = {x.name for x in spec.all_inputs if x.batched}
            part = {k: (np.concatenate([v, np.repeat(v[-1:], fixed - m, axis=0)]) if k in batched else v)
                    for k, v in part.items()}
            yield [o[:m] for o in _run(sess, outputs, part)]
        else:
            yield _run(sess, outputs, part)


def _run(sess, outputs, feed):
    try:
        return sess.run(outputs, feed)
    except Exception as e:  # onnxruntime's Fail / InvalidArgument: the graph cannot run on these inputs
        raise GanqError(f"onnxruntime cannot run the model on its spec's inputs "
                        f"({str(e).strip().splitlines()[0][:240]})") from None


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


__all__ = ["META_SPEC", "META_QUANT", "META_FEATURES", "PROVIDERS", "DECODE", "resolve_model", "load_model", "save_model",
           "read_metadata", "write_metadata", "copy_metadata", "read_spec", "read_quant", "default_decode", "describe", "check_spec",
           "infer_inputs", "graph_inputs", "fixed_batch", "symbolic_batch", "dynamic_batch", "batch_mode", "run_batched",
           "session_options", "check_provider", "session", "run", "prune", "sample_latents", "sample_inputs", "probe_inputs",
           "draw_input", "slice_feed", "feed_size", "note_once", "random_feed"]
