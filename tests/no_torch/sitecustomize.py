"""On PYTHONPATH (make test-deploy), this makes torch and the other `train` extras unimportable in every process of
the run, subprocesses included, as in an environment installed without the extra: the deploy-side tests must pass
and the torch-side ones skip."""

import sys

BLOCKED = ("torch", "torchvision", "onnxscript", "torch_fidelity")


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: a run without the train extra)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())

import importlib.util  # noqa: E402

_find_spec = importlib.util.find_spec


def _find_spec_without_blocked(name, package=None):
    """importlib.util.find_spec as it answers without the extra (onnxruntime.tools probes for torch this way)."""
    if name.split(".")[0] in BLOCKED:
        return None
    return _find_spec(name, package)


importlib.util.find_spec = _find_spec_without_blocked
