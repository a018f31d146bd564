"""User-facing errors. The CLI prints str(error) as one line on stderr and exits 1."""


class GanqError(Exception):
    """An error the user can act on: bad input, missing data, a refused overwrite."""


def check_range(name: str, value, lo, hi, integer: bool = True):
    """value if lo <= value <= hi (and finite, and an int when integer), else a GanqError naming the range."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise GanqError(f"{name} must be {kind} in {lo}..{hi}, got {value!r}")
    return value


def warn(message: str) -> None:
    """One warning line on stderr (for what ganq recovers from by itself, e.g. a corrupt cache entry)."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def test_point(name: str) -> None:
    """Deterministic places for the signal tests (start, import, parse: the command line's stages; work: each weight
    quantize solves). GANQ_TEST_SIGNAL_AT=name: ganq sends itself SIGINT here. GANQ_TEST_PAUSE_AT=name: ganq says
    so on stderr and waits here (up to 60 s) for the test's own signal."""
    import os

    if os.environ.get("GANQ_TEST_SIGNAL_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGINT)
    if os.environ.get("GANQ_TEST_PAUSE_AT") == name:
        import sys
        import time

        print(f"ganq-test: paused at {name}", file=sys.stderr, flush=True)
        time.sleep(60)
