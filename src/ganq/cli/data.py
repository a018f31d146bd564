"""`ganq datasets`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ganq.cli.base import DataRoot, app, err_console, handles_errors, out_console, table


@app.command()
@handles_errors
def datasets(data_root: DataRoot = None,
             as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False):
    """List the data sets ganq knows and where each was found."""
    from ganq import data

    rows = data.catalogue(data_root)
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    out_console.print(table("data sets", ["name", "shape", "found in", "description"],
                             [[r["name"], r["shape"], r["found"] or "not found", r["description"]] for r in rows]))
    err_console.print("own images: --dataset folder:PATH (class subfolders, or a .zip of them)", highlight=False)
