"""User-facing errors. The CLI prints str(error) as one line on stderr and exits 1."""


class GanqError(Exception):
    """An error the user can act on: bad input, missing data, a refused overwrite."""
