"""``python -m numbadam``: the ``numbadam`` command line (see :mod:`numbadam.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
