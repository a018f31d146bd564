"""Mixed precision by GAN quality: per-layer bit widths chosen by a GAN metric, written as one k-bit file.

    ganq quantize zoo:fashion-mnist-cnn3 --target fid=1.10 --bits-choices 2,3,4,5,6,8 --out m.onnx

1. sensitivity: each weight tensor alone at each candidate width (the others fp32), scored on a small seeded set
   (`proxy_n` generated + real images, the same `evaluate` as `ganq evaluate`): the loss against fp32 of the target
   metric (FID up, precision down, ...), clamped at 0 (a layer that "improves" the metric is noise, not a gift);
2. allocation: the layers' losses are taken as additive; an exact Pareto dynamic programme over (size, loss) finds
   the fewest bytes whose predicted loss stays within the target's allowance (or the least loss within --budget
   bytes / --avg-bits);
3. verification with the full metric (`verify_n` + `verify_n`); a plan that misses the target gets its most
   sensitive layer one width wider and is verified again, at most `max_rounds` times;
4. with a target, the uniform plans from the narrowest width up to the first that meets it: when that one is smaller
   than the verified plan, it is the file written (an end-to-end method then narrows from it).

Cost: (layers x widths) proxy evaluations + 1 fp32 and up to 1 + max_rounds full ones, + the uniform plans the
result is compared with (from the narrowest width up to the first that meets the target).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ganq.errors import GanqError, check_range
from ganq.evaluate.catalogue import TARGETS, metric

class OutOfReach(GanqError):
    """The target cannot be met over the bit choices: a result about the model, not a failure of the run."""


SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(B|KB|KIB|MB|MIB|K|M)?\s*$", re.I)
UNITS = {None: 1, "B": 1, "K": 1024, "KB": 1000, "KIB": 1024, "M": 1024 ** 2, "MB": 1000 ** 2, "MIB": 1024 ** 2}


def parse_target(text: str, flag: str = "--target") -> tuple[str, float]:
    """'fid=1.10' -> ('fid', 1.10): FID at most 1.10 x fp32's; 'precision=0.95': at least 0.95 x fp32's. flag: the
    option the text came from, named in the errors."""
    name, sep, value = str(text).partition("=")
    name = name.strip().lower()
    if not sep:
        raise GanqError(f"{flag} must be METRIC=RATIO (e.g. fid=1.10, precision=0.95), got {text!r}")
    if name not in TARGETS:
        raise GanqError(f"{flag}: unknown metric {name!r}; choose one of {', '.join(TARGETS)}")
    try:
        ratio = float(value)
    except ValueError:
        raise GanqError(f"{flag} {text}: RATIO must be a number") from None
    m = metric(name)
    if m.higher_is_better:
        check_range(f"{flag} {name}", ratio, 0.01, 1.0, integer=False)
    else:
        check_range(f"{flag} {name}", ratio, 1.0, 100.0, integer=False)
    return name, ratio


def parse_size(text: str) -> int:
    """'350KiB', '1.5MiB', '400000', '350KB' -> bytes."""
    m = SIZE.match(str(text))
    if not m:
        raise GanqError(f"--budget must be a size like 350KiB, 1.5MiB or 400000 (bytes), got {text!r}")
    n = int(float(m.group(1)) * UNITS[(m.group(2) or "B").upper() if m.group(2) else None])
    return check_range("--budget (bytes)", n, 1, 2 ** 40)


@dataclass(frozen=True)
class MixedOptions:
    """One of target / budget / avg_bits; the candidate widths; the proxy and verification sizes. flags: the options
    the target and the widths came from, named in the errors (quantize's, or the sweep's --mixed/--mixed-choices)."""

    target: str | None = None
    budget: str | None = None
    avg_bits: float | None = None
    bits_choices: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    proxy_n: int = 2000
    verify_n: int = 10000
    max_rounds: int = 3
    seed: int = 0
    flags: tuple[str, str] = field(default=("--target", "--bits-choices"), compare=False, repr=False)
    metric: str = field(default="fid", init=False)
    ratio: float | None = field(default=None, init=False)
    budget_bytes: int | None = field(default=None, init=False)

    def __post_init__(self):
        given = [x is not None for x in (self.target, self.budget, self.avg_bits)]
        if sum(given) != 1:
            raise GanqError("mixed precision takes exactly one of --target, --budget and --avg-bits")
        choices = tuple(self.bits_choices)
        target_flag, choices_flag = self.flags
        if not choices or len(set(choices)) != len(choices):
            raise GanqError(f"{choices_flag} must list distinct widths, got {','.join(map(str, choices))}")
        for b in choices:
            check_range(choices_flag, b, 1, 16)
        object.__setattr__(self, "bits_choices", tuple(sorted(choices)))
        check_range("--proxy-n", self.proxy_n, 100, 100_000)
        check_range("--verify-n", self.verify_n, 10, 1_000_000)
        check_range("--max-rounds", self.max_rounds, 0, 20)
        if self.target is not None:
            name, ratio = parse_target(self.target, target_flag)
            object.__setattr__(self, "metric", name)
            object.__setattr__(self, "ratio", ratio)
        if self.budget is not None:
            object.__setattr__(self, "budget_bytes", parse_size(self.budget))
        if self.avg_bits is not None:
            check_range("--avg-bits", self.avg_bits, min(choices), max(choices), integer=False)


# --- allocation --------------------------------------------------------------------------------------------------

def pareto(options: list[list[tuple[float, float]]]) -> list[tuple[float, float, tuple[int, ...]]]:
    """Exact Pareto front of sum-of-(size, loss) over one option per layer: [(size, loss, choice per layer)], by
    size ascending with loss strictly descending. options[l][j] = (size, loss) of layer l at choice j."""
    front: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for layer in options:
        cand = [(s + ls, c + lc, idx + (j,)) for s, c, idx in front for j, (ls, lc) in enumerate(layer)]
        cand.sort(key=lambda t: (t[0], t[1]))
        front, best = [], float("inf")
        for t in cand:
            if t[1] < best - 1e-12:
                front.append(t)
                best = t[1]
    return front


def choose(front, max_size: float | None = None, max_loss: float | None = None):
    """The fewest-size point within max_loss, or the least-loss point within max_size; None if none fits."""
    if max_loss is not None:
        ok = [t for t in front if t[1] <= max_loss + 1e-12]
        return min(ok, key=lambda t: (t[0], t[1])) if ok else None
    ok = [t for t in front if t[0] <= max_size]
    return min(ok, key=lambda t: (t[1], t[0])) if ok else None


# --- the search ----------------------------------------------------------------------------------------------------

def _loss(name: str, value: float, fp32: float) -> float:
    m = metric(name)
    return max(0.0, (fp32 - value) if m.higher_is_better else (value - fp32))


def _meets(name: str, value: float, fp32: float, ratio: float) -> bool:
    m = metric(name)
    return value >= ratio * fp32 if m.higher_is_better else value <= ratio * fp32


class _naming:
    """Errors about the search's temporary files name the user's model instead."""

    def __init__(self, tmp: Path, src):
        self.tmp, self.src = tmp, src

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, GanqError) and str(self.tmp) in str(err):
            raise GanqError(re.sub(re.escape(str(self.tmp)) + r"/[^\s:]+", str(self.src), str(err))) from None
        return False


def mixed_quantize(src, out, options, mixed: MixedOptions, dataset=None, features=None, data_root=None,
                   progress=None, cache=None, compare_uniform: bool = True, threads: int | None = None) -> dict:
    """Quantize src into out with per-tensor bits chosen by `mixed` (options: method, granularity, format, ...).
    Returns the report: the per-layer table, the chosen plan, verified metrics, the uniform plans compared (none
    when compare_uniform is false: the sweep has them as rows). cache: the real-feature cache folder."""
    from dataclasses import replace

    from functools import partial

    from ganq.evaluate.options import EvalOptions
    from ganq.evaluate.run import evaluate as _evaluate
    from ganq.quantize import load_model, make_plan, quantize_file
    from ganq.quantize.plan import FLOAT_BITS, Plan, TensorPlan

    tick = progress or (lambda what, done=1: None)
    evaluate = partial(_evaluate, cache=cache, threads=threads)
    model = load_model(src)
    from ganq.onnx_io import check_spec, read_spec
    check_spec(model, read_spec(model, str(src)), str(src))  # before any layer is quantized, naming the user's file
    base = make_plan(model, mixed.bits_choices[0], options.method_config, options.granularity, options.include_bias)
    layers = [t for t in base.tensors if t.target.role == "weight"]
    if not layers:
        raise GanqError(f"{src}: no quantizable weights")
    for b in mixed.bits_choices:
        options.method_config.check_bits(b)
    proxy = EvalOptions(n=mixed.proxy_n, seed=mixed.seed, kid_subset_size=min(1000, mixed.proxy_n))
    full = EvalOptions(n=mixed.verify_n, seed=mixed.seed, kid_subset_size=min(1000, mixed.verify_n))

    def plan_of(bits_by_name: dict[str, int]) -> Plan:
        return Plan(tuple(TensorPlan(t.target, bits_by_name.get(t.target.name, FLOAT_BITS), t.method, t.granularity)
                          for t in base.tensors if t.target.role == "weight"))

    with tempfile.TemporaryDirectory(prefix="ganq-mixed-") as tmp, _naming(Path(tmp), src):
        tmp = Path(tmp)

        # an end-to-end method (distill) trains the whole network per file: the per-layer sensitivities are its
        # init's (a one-layer file is the init there anyway), the plans are built and verified with it
        e2e = getattr(options.method_config, "end_to_end", False)
        layer_options = replace(options, method=options.method_config.init, method_opts=()) if e2e else options

        def build(bits_by_name, name, opts=options):
            path = tmp / f"{name}.onnx"
            plan = plan_of(bits_by_name)
            if all(t.bits == FLOAT_BITS for t in plan.tensors):
                return path, quantize_file(src, path, replace(options, bits=FLOAT_BITS, format="fake", tensor_bits=(),
                                                              plan_file=None), Plan(()))
            if opts is not options:
                plan = Plan(tuple(replace(t, method=opts.method_config) for t in plan.tensors))
            return path, quantize_file(src, path, opts, plan, data_root=data_root)

        def run(bits_by_name, opts: EvalOptions, name="p"):
            path, rep = build(bits_by_name, name)
            return rep, evaluate(path, dataset, features, opts, data_root)

        name = mixed.metric
        # sizes first (quantize only), so that an impossible budget is refused before any evaluation
        fp32_path, fp32_rep = build({}, "fp32")
        table = []
        for i, t in enumerate(layers):
            row = {"tensor": t.target.name, "op": t.target.op_type, "params": None, "by_bits": {}}
            for b in mixed.bits_choices:
                path, rep = build({t.target.name: b}, f"l{i}-{b}", layer_options)
                tr = next(r for r in rep["tensors"] if r["tensor"] == t.target.name)
                row["params"] = tr["params"]
                row["by_bits"][b] = {"bytes": tr["bytes_stored"], "file": path}
            table.append(row)
        fixed = fp32_rep["bytes_file"] - sum(4 * r["params"] for r in table)
        total_params = sum(r["params"] for r in table)
        if mixed.avg_bits is not None:
            size = lambda r, b: b * r["params"]  # noqa: E731  bit-params
            limit = mixed.avg_bits * total_params
        else:
            size = lambda r, b: r["by_bits"][b]["bytes"]  # noqa: E731
            limit = None if mixed.budget_bytes is None else mixed.budget_bytes - fixed
        if limit is not None and sum(size(r, mixed.bits_choices[0]) for r in table) > limit:
            smallest = sum(size(r, mixed.bits_choices[0]) for r in table)
            what = (f"{smallest / total_params:.2f} average bits" if mixed.avg_bits is not None
                    else f"about {smallest + fixed:,.0f} bytes")
            raise GanqError(f"the budget is below the smallest plan over --bits-choices ({what}); widen the "
                            "budget or add narrower widths")
        fp32_proxy = evaluate(fp32_path, dataset, features, proxy, data_root)
        tick("sensitivity")
        for row in table:
            for b in mixed.bits_choices:
                ev = evaluate(row["by_bits"][b].pop("file"), dataset, features, proxy, data_root)
                row["by_bits"][b].update({"proxy": ev[name], "loss": _loss(name, ev[name], fp32_proxy[name])})
                tick("sensitivity")
        opts_per_layer = [[(size(r, b), r["by_bits"][b]["loss"]) for b in mixed.bits_choices] for r in table]
        front = pareto(opts_per_layer)
        full_fp32 = evaluate(fp32_path, dataset, features, full, data_root)
        tick("verify")
        if mixed.target is not None:
            allowance = (abs(mixed.ratio - 1.0)) * fp32_proxy[name]
            pick = choose(front, max_loss=allowance)
            if pick is None:  # the widest plan's predicted loss is over the allowance
                best = min(front, key=lambda t: (t[1], t[0]))
                m = metric(name)
                value = fp32_proxy[name] - best[1] if m.higher_is_better else fp32_proxy[name] + best[1]
                raise OutOfReach(f"--target {mixed.target} is out of reach of --bits-choices "
                                f"{','.join(map(str, mixed.bits_choices))}: the best reachable is about "
                                f"{name}={value / fp32_proxy[name]:.3f} (by the proxy); loosen the target or add "
                                "wider widths")
        else:
            pick = choose(front, max_size=limit)
        choice = [mixed.bits_choices[j] for j in pick[2]]
        rounds = []
        for attempt in range(mixed.max_rounds + 1):
            bits = {r["tensor"]: b for r, b in zip(table, choice)}
            rep, ev = run(bits, full, "mixed")
            tick("verify")
            ok = mixed.target is None or _meets(name, ev[name], full_fp32[name], mixed.ratio)
            if mixed.budget_bytes is not None and rep["bytes_file"] > mixed.budget_bytes:
                ok = False
            rounds.append({"bits": dict(bits), name: ev[name], "bytes_file": rep["bytes_file"], "meets": ok})
            if ok or mixed.target is None or attempt == mixed.max_rounds:
                break
            # raise the most sensitive layer that can still widen, by its loss at the chosen width
            cand = [(r["by_bits"][b]["loss"], i) for i, (r, b) in enumerate(zip(table, choice))
                    if b != mixed.bits_choices[-1]]
            if not cand:
                break
            _, i = max(cand)
            choice[i] = mixed.bits_choices[mixed.bits_choices.index(choice[i]) + 1]
        uniform = []

        def uniform_plan(b):
            urep, uev = run({r["tensor"]: b for r in table}, full, f"u{b}")
            uniform.append({"bits": b, "bytes_file": urep["bytes_file"],
                            **{k: uev[k] for k in ("fid", "precision", "recall", "inception_score")},
                            "meets": (mixed.target is None or _meets(name, uev[name], full_fp32[name], mixed.ratio))})
            tick("uniform")
            return urep, uev

        if mixed.target is not None and rounds[-1]["meets"]:
            # uniform plans, from the narrowest width up to the first that meets: when that one is smaller than the
            # verified mixed file, it is the smallest file found and the one written (and narrowed from, below)
            for b in mixed.bits_choices if compare_uniform else ():
                urep, uev = uniform_plan(b)
                if uniform[-1]["meets"]:
                    if urep["bytes_file"] < rep["bytes_file"]:
                        choice, bits, rep, ev = [b] * len(table), {r["tensor"]: b for r in table}, urep, uev
                        shutil.copyfile(tmp / f"u{b}.onnx", tmp / "mixed.onnx")
                        rounds.append({"bits": dict(bits), name: ev[name], "bytes_file": rep["bytes_file"],
                                       "meets": True, "uniform": True})
                    break
        if e2e and mixed.target is not None and rounds[-1]["meets"]:
            # the distilled file beats its init's prediction: narrow the layer that loses least by it, while the
            # verified file still meets the target
            kept = (dict(bits), rep, ev)
            for _ in range(mixed.max_rounds):
                cand = [(r["by_bits"][mixed.bits_choices[mixed.bits_choices.index(b) - 1]]["loss"]
                         - r["by_bits"][b]["loss"], i) for i, (r, b) in enumerate(zip(table, choice))
                        if b != mixed.bits_choices[0]]
                if not cand:
                    break
                _, i = min(cand)
                trial = list(choice)
                trial[i] = mixed.bits_choices[mixed.bits_choices.index(choice[i]) - 1]
                tbits = {r["tensor"]: b for r, b in zip(table, trial)}
                trep, tev = run(tbits, full, "narrow")
                tick("verify")
                ok = _meets(name, tev[name], full_fp32[name], mixed.ratio)
                rounds.append({"bits": dict(tbits), name: tev[name], "bytes_file": trep["bytes_file"], "meets": ok,
                               "narrowed": True})
                if not ok:
                    break
                choice, kept = trial, (tbits, trep, tev)
                shutil.copyfile(tmp / "narrow.onnx", tmp / "mixed.onnx")
            bits, rep, ev = kept
            rounds.append(dict(next(r for r in reversed(rounds) if r["meets"]), kept=True))
        if not rounds[-1]["meets"]:
            got = rounds[-1]
            if mixed.target is not None:
                best = (max if metric(name).higher_is_better else min)(r[name] for r in rounds)
                raise OutOfReach(f"the verified plan misses {mixed.target}: {name} {got[name]:.3f} against the fp32 "
                                f"{full_fp32[name]:.3f} x {mixed.ratio} after {len(rounds)} verification(s); the "
                                f"best reachable was {name}={best / full_fp32[name]:.3f}; widen --bits-choices or "
                                "--max-rounds")
            raise GanqError(f"the plan's file is {got['bytes_file']:,} bytes, over the budget "
                            f"{mixed.budget_bytes:,}; give a larger budget")
        final = rep  # the chosen verified file, tmp/mixed.onnx
        # under a budget, the uniform plans to compare with: from the narrowest width up to the first larger file
        for b in mixed.bits_choices if compare_uniform and mixed.target is None else ():
            urep, _ = uniform_plan(b)
            if urep["bytes_file"] > rounds[-1]["bytes_file"]:
                break
        from ganq._io import atomic_path

        chosen = rounds[-1]["bits"]
        plan_file = plan_path(out)
        # both written under temporary names first: a failure in either (a full disk) leaves neither
        with atomic_path(plan_file) as pdst, atomic_path(out) as dst:
            pdst.write_text(plan_of(chosen).to_json() + "\n")
            dst.write_bytes((tmp / "mixed.onnx").read_bytes())
    for r in table:
        r["chosen_bits"] = chosen[r["tensor"]]
    avg = sum(chosen[r["tensor"]] * r["params"] for r in table) / total_params
    return {"out": str(out), "source": str(src), "metric": name, "target": mixed.target, "ratio": mixed.ratio,
            "budget_bytes": mixed.budget_bytes, "avg_bits_limit": mixed.avg_bits,
            "bits_choices": list(mixed.bits_choices), "proxy_n": mixed.proxy_n, "verify_n": mixed.verify_n,
            "fp32": {k: full_fp32[k] for k in ("fid", "precision", "recall", "inception_score")},
            "fp32_proxy": fp32_proxy[name], "bytes_fixed": fixed, "layers": table, "rounds": rounds, "avg_bits": avg,
            "bytes_file": final["bytes_file"], "verified": {k: ev[k] for k in ("fid", "precision", "recall",
                                                                                 "inception_score")},
            "uniform": uniform, "plan": json.loads(plan_of(chosen).to_json()), "plan_file": str(plan_file),
            "method": options.method,
            "granularity": options.granularity, "format": options.format}


__all__ = ["OutOfReach", "MixedOptions", "mixed_quantize", "pareto", "choose", "parse_target", "parse_size"]


def mixed_request(bits, tensor_bits, plan, target, budget, avg_bits, bits_choices: str, proxy_n: int, verify_n: int,
                  max_rounds: int) -> tuple[int, "MixedOptions | None"]:
    """`ganq quantize`'s choice between a given width and a mixed-precision search: (bits to build the options
    with, MixedOptions or None). One GanqError when the flags contradict each other."""
    if target is None and budget is None and avg_bits is None:
        if bits is None:
            raise GanqError("give --bits (or --target, --budget or --avg-bits for per-layer widths)")
        return bits, None
    from ganq.study.settings import parse_bits

    if bits is not None or tensor_bits or plan:
        raise GanqError("--target/--budget/--avg-bits choose the bits themselves: drop --bits, --tensor-bits "
                        "and --plan")
    try:
        choices = parse_bits(bits_choices)
    except GanqError:
        raise GanqError(f"--bits-choices must be comma-separated widths like 2,3,4,8, got {bits_choices!r}") from None
    mixed = MixedOptions(target=target, budget=budget, avg_bits=avg_bits, bits_choices=choices, proxy_n=proxy_n,
                         verify_n=verify_n, max_rounds=max_rounds)
    return mixed.bits_choices[0], mixed


def plan_path(out) -> Path:
    """The plan file written beside a mixed-precision model."""
    return Path(str(out) + ".plan.json")


def check_outputs(src, out, force: bool) -> None:
    """The output policy of `ganq quantize --target/--budget/--avg-bits` before any work: the model and its plan
    file, each refused if it exists without force."""
    from ganq._io import check_out
    from ganq.quantize.pipeline import check_output

    check_output(src, out, force)
    check_out(plan_path(out), force, [src])


def progress_total(src, mixed: "MixedOptions") -> int:
    """The number of progress steps mixed_quantize reports for model src: the fp32 reference, every weight at every
    width, the uniform plans, and the verification rounds."""
    from ganq.onnx_io import load_model
    from ganq.quantize.ops import count_weights

    n_layers = count_weights(load_model(src, external_data=False))
    return 1 + n_layers * len(mixed.bits_choices) + 2 + mixed.max_rounds + len(mixed.bits_choices)
