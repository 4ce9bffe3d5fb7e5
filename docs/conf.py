"""Sphinx configuration for maestro_sc (cookiecutter-scverse layout, myst-nb)."""

from __future__ import annotations

import os
import warnings
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

import maestro_sc

HERE = Path(__file__).parent

# sphinx-autodoc-typehints 3.6 calls an API that Sphinx 9 deprecates, once per docstring: a
# Python warning on stderr, not a Sphinx warning, and nothing this project can fix.
warnings.filterwarnings("ignore", message=r".*set_application.* is deprecated")

# -- Project -----------------------------------------------------------------------------------

_info = metadata("maestro_sc")
project = _info["Name"]
author = _info.get("Author") or "maestro_sc developers"
copyright = f"{datetime.now():%Y}, {author}"
version = maestro_sc.__version__
release = version
# The repository button appears once pyproject.toml names the source ([project.urls] Source).
_urls = dict(u.split(", ", 1) for u in _info.get_all("Project-URL") or [])
repository_url = _urls.get("Source") or _urls.get("Repository")

# -- General -----------------------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "tutorials/*.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
default_role = "literal"
pygments_style = "default"

# -- API reference -----------------------------------------------------------------------------

# Stubs go to docs/generated (gitignored) and are rebuilt from the docstrings on every build.
autosummary_generate = True
autodoc_member_order = "groupwise"
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
typehints_document_rtype = False

# -- Notebooks and MyST ------------------------------------------------------------------------

# Tutorials are stored executed; the docs show their outputs and never run them.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image"]
myst_heading_anchors = 3
myst_url_schemes = ("http", "https", "mailto")

# Tutorials in the order a new user should read them; any other notebook follows by name.
TUTORIAL_ORDER = ("quickstart", "fcs_to_embeddings", "evaluation")
TUTORIAL_MARKER = "<!-- tutorial notebooks -->"

# -- Cross-references --------------------------------------------------------------------------

# Inventories are fetched only where the network is known to be there (ReadTheDocs, or on
# request): an offline build would warn on every failed fetch, and -W turns that into an error.
_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
}
_online = os.environ.get("READTHEDOCS") == "True" or os.environ.get("MAESTRO_DOCS_INTERSPHINX")
intersphinx_mapping = _INTERSPHINX if _online else {}

# -- HTML --------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"maestro_sc {version}"
html_static_path = ["_static"]
html_css_files = ["css/custom.css"]
html_show_sphinx = False
html_theme_options = {"navigation_with_keys": False}
if repository_url:
    html_theme_options |= {
        "repository_url": repository_url,
        "use_repository_button": True,
        "path_to_docs": "docs/",
    }


def tutorial_entries(folder: Path = HERE / "tutorials") -> list[str]:
    """Toctree entries for the notebooks in ``tutorials/``, in reading order."""
    found = sorted(p.stem for p in folder.glob("*.ipynb"))
    ordered = [name for name in TUTORIAL_ORDER if name in found]
    ordered += [name for name in found if name not in TUTORIAL_ORDER]
    return [f"tutorials/{name}" for name in ordered]


def _fill_tutorial_toctree(app, docname: str, source: list[str]) -> None:
    # A toctree naming a notebook that is not there yet (or a glob matching none) warns, and
    # -W fails the build: list exactly the notebooks that exist.
    if docname == "tutorials":
        source[0] = source[0].replace(TUTORIAL_MARKER, "\n".join(tutorial_entries()))


def _reread_tutorials(app, env, added, changed, removed) -> list[str]:
    # The tutorial page's toctree depends on the notebooks present, not on its own source.
    return ["tutorials"]


def _is_underline(line: str) -> bool:
    return len(line.strip()) >= 3 and set(line.strip()) == {"-"}


def indent_prose_returns(lines: list[str]) -> None:
    """Indent a prose "Returns" section so napoleon reads it as one untyped description.

    Most docstrings here describe the result in prose (scanpy's style) rather than as numpydoc
    ``type`` + indented description; napoleon would make every unindented prose line a separate
    return value. A section whose second line is indented (the numpydoc form) is left alone.
    """
    for pos in range(len(lines) - 1):
        if lines[pos].strip() == "Returns" and _is_underline(lines[pos + 1]):
            break
    else:
        return
    start = pos + 2
    while start < len(lines) and lines[start].strip() in {"", ":"}:
        start += 1
    end = start
    while end < len(lines) and not (end + 1 < len(lines) and _is_underline(lines[end + 1])):
        end += 1
    body = lines[start:end]
    content = [line for line in body if line.strip()]
    if not content or (len(content) > 1 and content[1].startswith((" ", "\t"))):
        return
    lines[pos + 2 : end] = [":", *(f"    {line}" if line.strip() else line for line in body)]


def _prose_returns(app, what, name, obj, options, lines: list[str]) -> None:
    indent_prose_returns(lines)


def setup(app) -> None:
    app.connect("source-read", _fill_tutorial_toctree)
    app.connect("env-get-outdated", _reread_tutorials)
    # Before napoleon (priority 500) turns the numpydoc sections into fields.
    app.connect("autodoc-process-docstring", _prose_returns, priority=499)
