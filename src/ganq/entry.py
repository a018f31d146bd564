"""The `ganq` command's entry point. It imports nothing heavy itself, so that Ctrl-C at any moment — during the
imports of typer, numpy and onnx, while parsing, or in the middle of the work — ends in the one-line interrupted
message and exit code 130, never in a traceback."""

import signal
import sys

from ganq.errors import test_point

MESSAGE = "error: interrupted; files already written are complete"


class Interrupted(BaseException):
    """Ctrl-C once ganq has started: a BaseException of ganq's own, so that click's parser (which turns a
    KeyboardInterrupt into 'Aborted!') lets it through to ganq's one line."""


def _raise_interrupted(signum, frame):
    raise Interrupted()


def main():
    try:
        test_point("start")
        from ganq.cli import app  # typer, rich, numpy, onnx...

        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with SIGINT ignored
            signal.signal(signal.SIGINT, _raise_interrupted)
        test_point("parse")
        app()
    except (KeyboardInterrupt, Interrupted):
        sys.stderr.write(MESSAGE + "\n")
        sys.stderr.flush()
        sys.exit(130)
