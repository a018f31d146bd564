"""The shape (docs/architecture.md) holds: the import contracts in pyproject.toml (import-linter over grimp's graph,
imports inside functions included), one session recipe and one metadata reader, re-export-only package inits."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "ganq"
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")


def _lint(config: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath), "HOME": str(pythonpath)}
    return subprocess.run([sys.executable, "-c", LINT, str(config)], capture_output=True, text=True, env=env,
                          cwd=pythonpath, timeout=300)


def test_the_import_contracts_hold():
    r = _lint(REPO / "pyproject.toml", REPO / "src")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 kept, 0 broken" in r.stdout


def test_the_contracts_catch_torch_imported_inside_a_deploy_function(tmp_path):
    """A deliberate break: a copy of the package whose quantize plan imports torch inside a function, and whose
    runtime imports ganq.train; the contracts must name both."""
    shutil.copytree(SRC, tmp_path / "ganq", ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    with open(tmp_path / "ganq" / "quantize" / "plan.py", "a") as f:
        f.write("\n\ndef _sneaky():\n    import torch\n    return torch\n")
    with open(tmp_path / "ganq" / "runtime" / "generator.py", "a") as f:
        f.write("\n\ndef _sneakier():\n    from ganq.train import checkpoint\n    return checkpoint\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    r = _lint(tmp_path / "pyproject.toml", tmp_path)
    assert r.returncode != 0
    assert "ganq.quantize is not allowed to import torch" in r.stdout, r.stdout[-3000:]
    assert "ganq.runtime is not allowed to import ganq.train" in r.stdout, r.stdout[-3000:]


def _py_files():
    return [p for p in SRC.rglob("*.py")]


def test_one_session_recipe_and_one_metadata_reader():
    for needle in ("InferenceSession(", "metadata_props"):
        where = sorted(str(p.relative_to(SRC)) for p in _py_files() if needle in p.read_text())
        assert where == ["onnx_io.py"], (needle, where)


def test_stage_package_inits_only_re_export():
    for pkg in ("quantize", "evaluate", "runtime", "report", "study"):
        tree = ast.parse((SRC / pkg / "__init__.py").read_text())
        for i, node in enumerate(tree.body):
            doc = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            constant = isinstance(node, ast.Assign) and isinstance(node.value, (ast.Tuple, ast.List, ast.Constant))
            ok = doc or isinstance(node, (ast.Import, ast.ImportFrom)) or (constant and names)
            assert ok, f"{pkg}/__init__.py line {node.lineno}: {type(node).__name__} (re-exports only)"


def test_the_cli_parses_and_renders_only():
    """No rule in cli/: no GanqError raised there (but the one line saying torch is missing), no range checked, no
    op type asked, no metadata read; the rules live in the layers below, which the commands call."""
    for p in (SRC / "cli").glob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None and "GanqError" in ast.unparse(node.exc):
                fn = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                          and f.lineno <= node.lineno <= f.end_lineno)
                assert (p.name, fn.name) == ("base.py", "need_torch"), f"{p.name}:{node.lineno} raises GanqError"
            if isinstance(node, ast.Name):
                assert node.id not in ("check_range", "check_out", "op_type"), f"{p.name}:{node.lineno}: {node.id}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("op_type", "metadata_props"), f"{p.name}:{node.lineno}: {node.attr}"
