"""Sphinx configuration of the veda documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.  The notebooks under
``notebooks/`` (reached through the ``docs/notebooks`` link) are executed during the build, so
the site shows their outputs and a failing cell fails the build.  ``VEDA_DOCS_EXECUTE=off``
skips the execution for a quick look at the text: ``tests/test_docs.py`` builds that way, and
``tests/test_notebooks.py`` runs the notebooks.
"""

from __future__ import annotations

import os

import veda

project = "veda"
author = "veda developers"
copyright = "veda developers"
version = release = veda.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks
    "numpydoc",  # NumPy-style docstrings
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
# No intersphinx: CI builds the docs without network access.

# MyST: heading anchors so that pages can link to sections, ```{directive} fences.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# Notebooks: executed at every build, a failing cell or one over the timeout fails it.
nb_execution_mode = os.environ.get("VEDA_DOCS_EXECUTE", "force")
nb_execution_raise_on_error = True
nb_execution_timeout = 120  # seconds per cell
nb_execution_show_tb = True
nb_merge_streams = True

# API reference: members in source order, signatures with their annotations as written.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

html_theme = "pydata_sphinx_theme"
html_title = f"veda {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_show_sourcelink = False


def _cli_help_directive():  # type: ignore[no-untyped-def]
    """``.. veda-cli-help::``: the help text of ``veda`` and each subcommand, as literal blocks."""
    import argparse

    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    from veda.cli import build_parser

    class CliHelp(SphinxDirective):
        def run(self) -> list[nodes.Node]:
            parser = build_parser()
            out: list[nodes.Node] = [nodes.literal_block(text=parser.format_help())]
            for action in parser._actions:  # argparse keeps subparsers here, and nowhere public
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        section = nodes.section(ids=[f"veda-{name}"])
                        section += nodes.title(text=f"veda {name}")
                        section += nodes.literal_block(text=sub.format_help())
                        out.append(section)
            return out

    return CliHelp


def setup(app):  # type: ignore[no-untyped-def]
    app.add_directive("veda-cli-help", _cli_help_directive())
    return {"parallel_read_safe": True}
