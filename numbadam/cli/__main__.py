"""``python -m numbadam.cli``: the ``numbadam`` command line."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
