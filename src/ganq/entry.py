"""The `ganq` command's entry point. It imports nothing heavy itself, so that Ctrl-C at any moment — during the
imports of typer, numpy and onnx, while parsing, or in the middle of the work — ends in the one-line interrupted
message and exit code 130, never in a traceback."""

import signal
import sys

from ganq.errors import test_point

MESSAGE = "error: interrupted; files already written are complete"


class Interrupted(BaseException):
    """Ctrl-C (or SIGTERM) once ganq has started: a BaseException of ganq's own, so that click's parser (which turns
    a KeyboardInterrupt into 'Aborted!') lets it through to ganq's one line. code: the exit status (130 for SIGINT,
    143 for SIGTERM, as a shell reports them)."""

    def __init__(self, code: int = 130):
        super().__init__(code)
        self.code = code


def _raise_interrupted(signum, frame):
    raise Interrupted(128 + signum)


def main():
    try:
        test_point("start")
        from ganq.cli import app  # typer, rich, numpy, onnx...

        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with SIGINT ignored
            signal.signal(signal.SIGINT, _raise_interrupted)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # SIGTERM unwinds too: workers stopped, temps removed
            signal.signal(signal.SIGTERM, _raise_interrupted)
        test_point("parse")
        app()
    except (KeyboardInterrupt, Interrupted) as e:
        sys.stderr.write(MESSAGE + "\n")
        sys.stderr.flush()
        sys.exit(getattr(e, "code", 130))
