"""GraphEdit: every change quantization makes to a graph goes through one object."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


class GraphEdit:
    """The one object through which quantization changes a graph. The decoders (initializers and nodes that
    replace weight initializers; shared constants made once), `replace` (float arrays that overwrite an
    initializer in place: the fake format), `removed` (initializers a decoder now computes) and `before` (nodes a
    method inserts before a node, e.g. OCS's channel duplication) are collected and committed once, by commit().
    Corrections (quantize.correct) go through set_init / add_init / insert_after, which apply at once: the
    calibration of every later layer runs on the corrected graph. Every new name comes from fresh()."""

    def __init__(self, graph, prefix: str = "ganq_q"):
        taken = {i.name for i in graph.initializer}
        taken |= {n for node in graph.node for n in list(node.input) + list(node.output)}
        taken |= {i.name for i in graph.input} | {o.name for o in graph.output}
        self.graph = graph
        self.prefix, self.inits, self.nodes, self._shared, self.taken = prefix, [], [], {}, set(taken)
        self.replace: dict[str, np.ndarray] = {}
        self.removed: set[str] = set()
        self.before: dict[int, list] = {}
        self.folds: list = []  # (node, BatchNormalization, new bias, its parameter names, shift): fold_batchnorm
        self.swaps: list = []  # (node, make): node replaced by make(node) at commit (quantize.nbits)
        self.initializers = {i.name: i for i in graph.initializer}

    def fresh(self, name: str) -> str:
        """A name no tensor of the graph has yet."""
        candidate, i = name, 1
        while candidate in self.taken:
            candidate, i = f"{name}_{i}", i + 1
        self.taken.add(candidate)
        return candidate

    def init(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def shared(self, key: str, array: np.ndarray) -> str:
        if key not in self._shared:
            self._shared[key] = self.init(f"{self.prefix}_{key}", array)
        return self._shared[key]

    def node(self, op: str, inputs: list[str], output: str, final: bool = False, **attrs) -> str:
        """A node computing `output`; its name is made unique unless it is the final (replaced) tensor."""
        output = output if final else self.fresh(output)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    # --- corrections: applied at once ---

    def set_init(self, name: str, array: np.ndarray) -> None:
        """Overwrite initializer `name` in place."""
        self.initializers[name].CopyFrom(numpy_helper.from_array(array, name))

    def add_init(self, name: str, array: np.ndarray, fresh: bool = True) -> str:
        """A new initializer of the graph (not a decoder's): `name` made fresh unless it already is."""
        name = self.fresh(name) if fresh else name
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        self.initializers[name] = self.graph.initializer[-1]
        return name

    def insert_after(self, node, new) -> None:
        self.graph.node.insert(list(self.graph.node).index(node) + 1, new)

    # --- the collected changes ---

    def fold_batchnorm(self, node, bn, bias: np.ndarray, params, shift: np.ndarray | None = None) -> None:
        """Stage a BatchNormalization folded into `node` (quantize.bn_decoder): at commit the node takes `bias`
        as its bias input, and the op that fed the BatchNorm (the node, or the last of the commuting ops between)
        produces the BatchNorm's output; an op without a bias slot (MatMul) gets the BatchNorm replaced by an Add of
        `shift` (the shift in the BatchNorm's layout). The BatchNorm and its parameters leave the graph."""
        self.folds.append((node, bn, bias, tuple(params), bias if shift is None else shift))

    def swap(self, node, make) -> None:
        """Stage node's replacement by the nodes make(node) returns, made at commit after the BatchNorm folds (so
        make sees the node's final inputs and outputs)."""
        self.swaps.append((node, make))

    def insert_before(self, node, nodes: list) -> None:
        i = next(k for k, n in enumerate(self.graph.node) if n is node)
        self.before[i] = nodes

    def commit(self) -> None:
        """Apply the collected changes: in-place replacements, then (when anything was removed or inserted) the
        initializers without the removed ones plus the decoders', and the nodes with the decoders first (they
        depend on initializers only) and each inserted run before its node."""
        graph = self.graph
        for name, array in self.replace.items():
            self.initializers[name].CopyFrom(numpy_helper.from_array(array, name))
        self._commit_folds()
        self._commit_swaps()
        if not (self.removed or self.before):
            return
        kept = [i for i in graph.initializer if i.name not in self.removed]
        del graph.initializer[:]
        graph.initializer.extend(kept + self.inits)
        nodes = list(self.nodes)
        for i, n in enumerate(graph.node):
            nodes.extend(self.before.get(i, []))
            nodes.append(n)
        del graph.node[:]
        graph.node.extend(nodes)

    def _commit_swaps(self) -> None:
        if not self.swaps:
            return
        made = {id(node): make(node) for node, make in self.swaps}
        nodes = []
        for n in self.graph.node:
            nodes.extend(made.get(id(n), [n]))
        # the positions of `before` runs: a swap replaces one node by one
        assert len(nodes) == len(self.graph.node), "a swap replaces one node by one"
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.swaps = []

    def _commit_folds(self) -> None:
        """Apply the staged BatchNorm folds before the rest of commit (node objects are still the graph's): a
        MatMul's BatchNorm becomes the Add of its shift in place; any other is dropped, and the positions of the
        runs inserted before nodes (`before`) move with it."""
        from ganq.quantize.ops import OPS, set_bias_input, uses

        if not self.folds:
            return
        graph = self.graph
        position = {id(n): i for i, n in enumerate(graph.node)}
        dropped = []
        producers = {o: n for n in graph.node for o in n.output}
        for node, bn, bias, params, shift in self.folds:
            if OPS.get(node.op_type).bias is None:  # MatMul: the BatchNorm node becomes Add(its input, shift)
                s = self.add_init(f"{node.name or bn.output[0]}_bn_bias", shift)
                src = bn.input[0]
                del bn.attribute[:]
                del bn.input[:]
                bn.input.extend([src, s])
                bn.op_type = "Add"
                continue
            set_bias_input(node, self.add_init(f"{node.name or bn.output[0]}_bn_bias", bias))
            producers[bn.input[0]].output[0] = bn.output[0]  # the node, or the last commuting op after it
            dropped.append(position[id(bn)])
        for j in sorted(dropped, reverse=True):
            del graph.node[j]
            self.before = {(i - 1 if i > j else i): v for i, v in self.before.items()}
        counts = uses(graph)
        gone = {p for _, _, _, params, _ in self.folds for p in params if counts.get(p, 0) == 0}
        kept = [i for i in graph.initializer if i.name not in gone]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        self.initializers = {i.name: i for i in graph.initializer}
        self.folds = []
