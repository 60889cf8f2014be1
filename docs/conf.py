"""
Sphinx configuration: MyST Markdown, furo, autodoc with Napoleon (Google style).

The build must work offline and without warnings:
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
No intersphinx and no remote inventories.
"""

from __future__ import annotations

import batchscope

project = "batchscope"
author = "The batchscope developers"
copyright = "the batchscope developers"
release = batchscope.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Every public coroutine documents what cancellation does at each stage.
napoleon_custom_sections = ["Cancellation"]

html_theme = "furo"
html_title = f"batchscope {release}"
