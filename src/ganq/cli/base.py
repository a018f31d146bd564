"""What every command module shares: the typer app, the consoles, one-line errors, tables and JSON output. The CLI
parses and renders; every rule lives below it. The only package that imports typer/rich; torch only lazily."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ganq.entry import MESSAGE, Interrupted
from ganq.errors import GanqError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Post-training quantization of GANs, deployed through ONNX.")
# Piped output gets wide tables rather than rich's 80-column default.
out_console = Console(soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, emoji=False, width=None if sys.stderr.isatty() else 200)


def fail(message: str, code: int = 1):
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(fn):
    """GanqError -> one line on stderr, exit 1; no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GanqError as e:
            fail(str(e).replace("\n", " "))
        except (KeyboardInterrupt, Interrupted) as e:
            fail(MESSAGE.removeprefix("error: "), getattr(e, "code", 130))
        except OSError as e:
            import errno

            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = e.filename or "a file"
            fail(f"{where}: no space left on the device; free some and run again (ganq writes under temporary "
                 "names: no file is left half-written)")
    return wrapper


def need_torch(what: str):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise GanqError(f"{what} needs PyTorch: pip install 'ganq[train]'") from None


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    """A rich table; columns whose cells all look like numbers are right-aligned."""
    import re
    numeric = re.compile(r"^[-+]?[\d,.]+( ?(KiB|MiB|%|± [\d.]+))?$|^-$|^fp32$")
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        right = bool(rows) and all(numeric.match(str(r[i])) for r in rows)
        t.add_column(c, justify="right" if right else "left")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help="Folder to look in first for data sets "
                                                   "(then $GANQ_DATA, ~/.cache/ganq/datasets, /usr/share/datasets).")]


def emit(report: dict, as_json: bool, render) -> None:
    if as_json:
        out_console.print_json(json.dumps(report))
    else:
        render(report)


def size(b: int) -> str:
    return f"{b / 1024:,.1f} KiB" if b < 1024 ** 2 else f"{b / 1024 ** 2:,.2f} MiB"


def methods_help() -> str:
    from rich.markup import escape

    from ganq.quantize.methods import METHODS

    return "\n\n".join(f"[bold]{n}[/bold]: {escape(cls.summary)}" for n, cls in METHODS.items())


def method_options(method_opt: list[str] | None) -> tuple:
    from ganq.quantize.methods import parse_method_opts

    return parse_method_opts(method_opt or [])


def metric_rows():
    from ganq.evaluate.catalogue import METRICS

    return [(m.name, m.label) for m in METRICS.values()]


def extra_metrics():
    from ganq.evaluate.catalogue import EXTRA_METRICS

    return list(EXTRA_METRICS.items())


def one_of(names) -> str:
    """'a, b or c' from a registry's names (help texts list what the registries hold)."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def formats_help() -> str:
    from ganq.quantize.formats import FORMATS
    return one_of(FORMATS)


def granularities_help() -> str:
    from ganq.quantize.decoders import GRANULARITIES
    return one_of(GRANULARITIES)


def providers_help() -> str:
    from ganq.onnx_io import PROVIDERS
    return one_of(PROVIDERS)
