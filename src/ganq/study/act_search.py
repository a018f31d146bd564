"""`ganq quantize --activations 8 --target fid=1.10`: which activation tensors must be wider than 8 bits for a
GAN-quality target, with the weights as the options give them (a GAN question: generators have a few tensors, such
as the pre-Tanh output, whose 8-bit grid costs most of the quality).

    1. the fp32 generator and the weights-only file (same weights, every activation float) on --proxy-n images;
    2. each activation tensor alone at 8 bits (the others float): its loss = its file's metric - the weights-only
       file's (below 0 counts as 0: noise);
    3. the losses taken as additive, the most sensitive tensors go to 16 bits until the predicted value meets the
       target (the weights-only value plus the losses of the tensors left at 8 bits; 16 bits counted as lossless);
    4. the file is verified on --verify-n images; a miss widens the next tensor (8 -> 16 in order of loss, then
       16 -> float), up to --max-rounds.

The widths are written beside the file as OUT.plan.json ({"tensors": {}, "activations": {NAME: 16 | 32}}), which
`--plan` reuses.

Without --bits (`--activations 8 --target fid=1.10 --bits-choices 4,6,8`) the weights' widths are chosen too
(joint_search): the weight search (ganq.study.mixed, activations float) gets WEIGHT_SHARE of the target's allowance
above fp32, then this search, on the weights it chose, widens activations within the whole target. One plan file
holds both ({"tensors": {weight: bits}, "activations": {...}})."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ganq.errors import GanqError, check_range
from ganq.study.mixed import OutOfReach, _loss, _meets, parse_target, plan_path


@dataclass(frozen=True)
class ActSearchOptions:
    target: str
    proxy_n: int = 2000
    verify_n: int = 10000
    max_rounds: int = 3
    seed: int = 0
    metric: str = field(default="fid", init=False)
    ratio: float = field(default=1.1, init=False)

    def __post_init__(self):
        check_range("--proxy-n", self.proxy_n, 100, 100_000)
        check_range("--verify-n", self.verify_n, 10, 1_000_000)
        check_range("--max-rounds", self.max_rounds, 0, 20)
        name, ratio = parse_target(self.target)
        object.__setattr__(self, "metric", name)
        object.__setattr__(self, "ratio", ratio)


WEIGHT_SHARE = 0.5  # of the target's allowance above fp32, what the weights' widths may spend in a joint search


def check_request(bits, act_tensor_bits, budget, avg_bits, plan, joint: bool = False) -> None:
    """What --activations with --target does not take, as one line before any work (joint: the weights' widths are
    searched too, so --bits is not needed)."""
    if budget is not None or avg_bits is not None:
        raise GanqError("--activations with mixed precision takes --target only (the activations' widths change "
                        "quality, hardly the file's size); give --bits for the weights")
    if plan is not None or act_tensor_bits:
        raise GanqError("--activations --target chooses the activations' widths itself: drop --plan and "
                        "--act-tensor-bits")
    if bits is None and not joint:
        raise GanqError("--activations --target needs --bits for the weights")
    if bits is not None and joint:
        raise GanqError("--bits fixes the weights' width: drop it for a joint search over --bits-choices")


def steps(n_tensors: int, search: ActSearchOptions) -> int:
    """Progress steps: the tensor list, fp32 and weights-only, one per tensor, the verifications."""
    return 3 + n_tensors + 2 + search.max_rounds


def activation_search(src, out, options, search: ActSearchOptions, dataset=None, features=None, data_root=None,
                      progress=None, cache=None, threads=None) -> dict:
    """Quantize src into out with the activations' widths chosen for search.target (see the module's doc)."""
    from functools import partial

    from ganq._io import atomic_path
    from ganq.evaluate.options import EvalOptions
    from ganq.evaluate.run import evaluate as _evaluate
    from ganq.quantize import quantize_file

    tick = progress or (lambda what, done=1: None)
    evaluate = partial(_evaluate, cache=cache, threads=threads)
    name = search.metric
    proxy = EvalOptions(n=search.proxy_n, seed=search.seed, kid_subset_size=min(1000, search.proxy_n))
    full = EvalOptions(n=search.verify_n, seed=search.seed, kid_subset_size=min(1000, search.verify_n))
    with tempfile.TemporaryDirectory(prefix="ganq-act-") as tmp:
        tmp = Path(tmp)

        def build(widths: dict, label: str):
            path = tmp / f"{label}.onnx"
            over = tuple((t, b) for t, b in widths.items() if b != options.activations)
            return path, quantize_file(src, path, replace(options, act_tensor_bits=over), data_root=data_root)

        all8, rep8 = build({}, "all")
        tensors = list(rep8["activations"]["ranges"]) + list(rep8["activations"]["kept_float"])
        kept_float = set(rep8["activations"]["kept_float"])  # the user's --keep-float stays float
        tick("activations")
        wonly = tmp / "weights.onnx"
        quantize_file(src, wonly, replace(options, activations=0, keep_float=(), act_calibration="minmax",
                                          act_symmetric=False, fold_bn=True), data_root=data_root)
        fp32_proxy = evaluate(src, dataset, features, proxy, data_root)[name]
        tick("fp32")
        w_proxy = evaluate(wonly, dataset, features, proxy, data_root)[name]
        tick("weights only")
        table = []
        for i, t in enumerate(tensors):
            if t in kept_float:
                continue
            path, _ = build({u: (options.activations if u == t else 32) for u in tensors}, f"t{i}")
            v = evaluate(path, dataset, features, proxy, data_root)[name]
            table.append({"tensor": t, "proxy": v, "loss": _loss(name, v, w_proxy)})
            tick("sensitivity")
        bound = abs(search.ratio - 1.0) * fp32_proxy  # what the target allows above fp32, weights included
        slack = bound - _loss(name, w_proxy, fp32_proxy)
        order = sorted(range(len(table)), key=lambda i: -table[i]["loss"])
        width = {r["tensor"]: options.activations for r in table}
        left = sum(r["loss"] for r in table)
        for i in order:  # widen the most sensitive until the predicted loss fits
            if left <= slack or options.activations == 16:
                break
            width[table[i]["tensor"]] = 16
            left -= table[i]["loss"]
        full_fp32 = evaluate(src, dataset, features, full, data_root)[name]
        tick("verify")
        rounds = []
        for attempt in range(search.max_rounds + 1):
            path, rep = build({**width, **{t: 32 for t in kept_float}}, f"r{attempt}")
            v = evaluate(path, dataset, features, full, data_root)[name]
            tick("verify")
            ok = _meets(name, v, full_fp32, search.ratio)
            rounds.append({"widths": dict(width), name: v, "meets": ok, "bytes_file": rep["bytes_file"], "file": path})
            if ok or attempt == search.max_rounds:
                break
            nxt = next((table[i]["tensor"] for i in order if width[table[i]["tensor"]] == 8), None) or \
                next((table[i]["tensor"] for i in order if width[table[i]["tensor"]] == 16), None)
            if nxt is None:
                break
            width[nxt] = 16 if width[nxt] == 8 else 32
        last = rounds[-1]
        if not last["meets"]:
            raise OutOfReach(f"the verified file misses {search.target}: {name} {last[name]:.3f} against the fp32 "
                             f"{full_fp32:.3f} x {search.ratio} after {len(rounds)} verification(s); raise "
                             "--max-rounds, keep more tensors float, or widen the weights")
        acts = {t: b for t, b in {**last["widths"], **{t: 32 for t in kept_float}}.items()
                if b != options.activations}
        plan_file = plan_path(out)
        with atomic_path(plan_file) as pdst, atomic_path(out) as dst:
            pdst.write_text(json.dumps({"tensors": {}, "activations": acts}, indent=1) + "\n")
            dst.write_bytes(Path(last["file"]).read_bytes())
    for r in table:
        r["chosen"] = last["widths"][r["tensor"]]
    for r in rounds:
        r.pop("file")
    return {"out": str(out), "plan_file": str(plan_file), "source": str(src), "metric": name,
            "target": search.target, "ratio": search.ratio, "proxy_n": search.proxy_n, "verify_n": search.verify_n,
            "bits": options.bits, "activations": options.activations, "calibration": options.act_calibration,
            "fp32_proxy": fp32_proxy, "weights_only_proxy": w_proxy, "fp32": full_fp32, "tensors": table,
            "kept_float": sorted(kept_float), "rounds": rounds, "verified": last[name],
            "bytes_file": last["bytes_file"], "widened": acts}


def weight_target(search: ActSearchOptions) -> str:
    """The weight search's target in a joint search: WEIGHT_SHARE of the allowance (FID 1.10 -> 1.05; precision
    0.90 -> 0.95)."""
    from ganq.evaluate.catalogue import metric

    up = not metric(search.metric).higher_is_better
    r = 1.0 + WEIGHT_SHARE * (search.ratio - 1.0) if up else 1.0 - WEIGHT_SHARE * (1.0 - search.ratio)
    return f"{search.metric}={r:.6g}"


def joint_search(src, out, options, search: ActSearchOptions, mixed, dataset=None, features=None, data_root=None,
                 progress=None, cache=None, threads=None) -> dict:
    """Quantize src into out with the weights' widths (over mixed.bits_choices) and the activations' widths chosen
    for search.target: the weights within WEIGHT_SHARE of its allowance, activations float; then the activations on
    those weights within the whole target (see the module's doc). Returns {"weights": the weight search's report,
    "activations": this search's, ...}."""
    from ganq._io import atomic_path
    from ganq.study.mixed import mixed_quantize

    with tempfile.TemporaryDirectory(prefix="ganq-joint-") as tmp:
        tmp = Path(tmp)
        wfile, jfile = tmp / "weights.onnx", tmp / "joint.onnx"
        wopts = replace(options, activations=0, keep_float=(), act_calibration="minmax", act_symmetric=False,
                        act_tensor_bits=())
        try:
            wrep = mixed_quantize(src, wfile, wopts, replace(mixed, target=weight_target(search)), dataset=dataset,
                                  features=features, data_root=data_root, progress=progress, cache=cache,
                                  threads=threads)
        except OutOfReach as e:
            raise OutOfReach(f"the weights alone: {e}") from None
        aopts = replace(options, bits=mixed.bits_choices[0], plan_file=str(plan_path(wfile)))
        arep = activation_search(src, jfile, aopts, search, dataset=dataset, features=features, data_root=data_root,
                                 progress=progress, cache=cache, threads=threads)
        plan = json.loads(plan_path(wfile).read_text())
        plan["activations"] = json.loads(plan_path(jfile).read_text())["activations"]
        plan_file = plan_path(out)
        with atomic_path(plan_file) as pdst, atomic_path(out) as dst:
            pdst.write_text(json.dumps(plan, indent=1) + "\n")
            dst.write_bytes(jfile.read_bytes())
    for r in (wrep, arep):
        r.update(out=str(out), plan_file=str(plan_file))
    return {"out": str(out), "plan_file": str(plan_file), "source": str(src), "metric": search.metric,
            "target": search.target, "weight_target": weight_target(search), "weight_share": WEIGHT_SHARE,
            "weights": wrep, "activations": arep, "verified": arep["verified"], "fp32": arep["fp32"],
            "bytes_file": arep["bytes_file"], "avg_bits": wrep["avg_bits"], "widened": arep["widened"]}


__all__ = ["ActSearchOptions", "activation_search", "check_request", "joint_search", "steps", "weight_target",
           "WEIGHT_SHARE"]
