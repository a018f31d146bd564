"""The page's decode-once for every format: onnxruntime-web does not fold a packed file's bit-plane decoder when it
makes a session (measured: 2.8x fp32 per image at batch 1), so `ganq app` ships the file in two parts:

    decoder.onnx   the constant subgraph (codes + decoders, no inputs) whose outputs are the float32 weights
    model.onnx     the rest of the graph, those weights as external data in "weights.bin" (not shipped)

The page runs decoder.onnx once, lays its outputs end to end as weights.bin in memory and makes the generator's
session with that buffer as its external data (onnxruntime-web's `externalData` option): the download is the
k-bit file's, the session holds float32 weights and runs at fp32 speed.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

WEIGHTS = "weights.bin"


def constant_nodes(graph) -> tuple[list, set[str]]:
    """(the nodes whose inputs are all initializers or other such nodes' outputs, the tensors they make)."""
    const = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input}
    const -= inputs
    nodes, made = [], set()
    for n in graph.node:  # graphs are topologically sorted
        if n.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"):
            continue
        if all((not x) or x in const for x in n.input) and n.input:
            nodes.append(n)
            const.update(o for o in n.output if o)
            made.update(o for o in n.output if o)
    return nodes, made


def split(model: onnx.ModelProto):
    """(decoder model, main model, [(tensor, bytes)] in weights.bin order), or None when the graph has no
    decoder to split off (or one whose outputs are not all float32)."""
    import numpy as np

    from ganq.onnx_io import run

    graph = model.graph
    nodes, made = constant_nodes(graph)
    if not nodes:
        return None
    const_ids = {id(n) for n in nodes}
    rest = [n for n in graph.node if id(n) not in const_ids]
    used_by_rest = {x for n in rest for x in n.input} | {o.name for o in graph.output}
    decoded = [t for n in nodes for t in n.output if t in made and t in used_by_rest]
    if not decoded:
        return None
    inits = {i.name: i for i in graph.initializer}
    need = {x for n in nodes for x in n.input}
    dec_graph = helper.make_graph(list(nodes), "decoder", [],
                                  [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in decoded],
                                  [inits[x] for x in sorted(need) if x in inits])
    dec = helper.make_model(dec_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        values = dict(zip(decoded, run(dec, {}, decoded)))
    except Exception:  # noqa: BLE001 - a decoded tensor that is not float32: the page keeps the one file
        return None
    if any(v.dtype != np.float32 for v in values.values()):
        return None
    for o in dec.graph.output:
        o.type.tensor_type.shape.dim.extend([onnx.TensorShapeProto.Dimension(dim_value=d) for d in values[o.name].shape])
    main = onnx.ModelProto()
    main.CopyFrom(model)
    keep = {x for n in rest for x in n.input}
    del main.graph.node[:]
    main.graph.node.extend(rest)
    kept = [i for i in graph.initializer if i.name in keep]
    del main.graph.initializer[:]
    main.graph.initializer.extend(kept)
    order, offset = [], 0
    for t in decoded:
        v = values[t]
        tp = TensorProto(name=t, data_type=TensorProto.FLOAT, dims=list(v.shape))
        tp.data_location = TensorProto.EXTERNAL
        for k, val in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(v.nbytes))):
            e = tp.external_data.add()
            e.key, e.value = k, val
        main.graph.initializer.append(tp)
        order.append((t, int(v.nbytes)))
        offset += v.nbytes
    return dec, main, order
