"""Sphinx configuration of the numbadam documentation.

Build with ``make docs`` (HTML, warnings are errors) from the repository root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Document the checkout, not whatever numbadam happens to be installed.
sys.path.insert(0, str(HERE.parent))

import numbadam  # noqa: E402  (after the path above)

project = "numbadam"
author = "numbadam developers"
copyright = "numbadam developers"
version = numbadam.__version__
release = numbadam.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# -- autodoc / autosummary / numpydoc -----------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_member_order = "groupwise"
autodoc_default_options = {"show-inheritance": False}
# Our class template lists members with autodoc; numpydoc's own Methods tables
# would need a stub page per method.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = False

# -- MyST -------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- doctest: `sphinx-build -b doctest docs docs/_build/doctest` ---------------
doctest_global_setup = "import numpy as np\nimport numbadam"

# -- intersphinx: off the network unless asked for ---------------------------
# The build machines may have no network; set NUMBADAM_DOCS_INTERSPHINX=1 to
# link NumPy and Python names.
intersphinx_mapping = {}
if os.environ.get("NUMBADAM_DOCS_INTERSPHINX"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
    }

# -- warnings -----------------------------------------------------------------
suppress_warnings: list[str] = []
# docs/cuda.md is written separately; until it exists its toctree entry is the
# only thing allowed to be missing.
if not (HERE / "cuda.md").exists():
    suppress_warnings.append("toc.not_readable")

# -- HTML ---------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"numbadam {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False


# -- every public name must be in the API reference ---------------------------
def _check_api_coverage(app):
    """Warn (an error under -W) for a public name missing from api.rst."""
    import re

    from sphinx.util import logging as sphinx_logging

    text = (HERE / "api.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s{3}(\w+)\s*$", text, flags=re.MULTILINE))
    from numbadam import distributed, keras3, schedules

    public = {n for n in numbadam.__all__ if n not in ("schedules", "__version__")}
    public |= set(schedules.__all__) | set(distributed.__all__) | set(keras3.__all__)
    for name in sorted(public - listed):
        sphinx_logging.getLogger(__name__).warning(
            "public name %r is missing from docs/api.rst", name
        )


def setup(app):
    app.connect("builder-inited", _check_api_coverage)
