"""The ganq command line: one module per command group (cli.data, cli.train, cli.quantize, cli.evaluate,
cli.deploy, cli.study) on the app of cli.base. It parses and renders; the rules live below it."""

from ganq.cli.base import app
from ganq.errors import test_point

test_point("import")  # a deterministic place for the signal tests, in the middle of the imports
# each module registers its commands, in this order
from ganq.cli import data, train, quantize, evaluate, deploy, study  # noqa: F401,E402,I001


from ganq.entry import main  # noqa: E402


__all__ = ["app", "main"]
