"""The documentation: API tables in step with ``__all__``, conf.py helpers, and a -W build."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import maestro_sc as mst

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NAMESPACES = ("io", "pp", "tl", "pl", "get", "datasets", "model")


def _conf():
    spec = importlib.util.spec_from_file_location("maestro_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def _api_entries() -> set[str]:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    pattern = rf"^ {{3}}((?:{'|'.join(NAMESPACES)})\.[\w.]+)\s*$"
    return set(re.findall(pattern, text, flags=re.MULTILINE))


def _public(namespace: str) -> list[tuple[str, object]]:
    module = getattr(mst, namespace)
    return [(name, getattr(module, name)) for name in module.__all__]


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_api_page_lists_every_public_function_and_class(namespace):
    entries = _api_entries()
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for name, obj in _public(namespace):
        if isinstance(obj, types.ModuleType):
            continue
        if not callable(obj):
            # Constants are named in the text rather than given a page of their repr.
            assert f"mst.{namespace}.{name}" in text, f"api.md does not mention {namespace}.{name}"
            continue
        # model/ objects are documented under their defining module (model.config.preset, ...),
        # the others under the namespace (tl.pretrain).
        candidates = {f"{namespace}.{name}"}
        if namespace == "model":
            candidates.add(f"{obj.__module__.removeprefix('maestro_sc.')}.{name}")
        assert candidates & entries, f"add {namespace}.{name} to an autosummary table in api.md"


def test_api_page_lists_only_existing_names():
    for entry in _api_entries():
        obj = mst
        for part in entry.split("."):
            assert hasattr(obj, part), f"api.md lists {entry}, which maestro_sc does not have"
            obj = getattr(obj, part)


def test_tutorial_entries_follow_reading_order(tmp_path):
    conf = _conf()
    assert conf.tutorial_entries(tmp_path) == []
    for name in ("evaluation", "zz_extra", "quickstart", "fcs_to_embeddings"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    (tmp_path / "notes.md").write_text("not a notebook")
    assert conf.tutorial_entries(tmp_path) == [
        "tutorials/quickstart",
        "tutorials/fcs_to_embeddings",
        "tutorials/evaluation",
        "tutorials/zz_extra",
    ]


def test_prose_returns_become_one_description():
    conf = _conf()
    prose = "Summary.\n\nReturns\n-------\n:\nA table: one row\nper sample.\n\nExamples\n--------\n>>> 1"
    prose = prose.split("\n")
    conf.indent_prose_returns(prose)
    assert prose[4:8] == [":", "    A table: one row", "    per sample.", ""]
    assert prose[8:] == ["Examples", "--------", ">>> 1"]

    typed = ["Returns", "-------", "AnnData", "    Cells of all files.", ""]
    before = list(typed)
    conf.indent_prose_returns(typed)
    assert typed == before


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    for module in ("sphinx", "myst_nb", "sphinx_book_theme", "sphinx_autodoc_typehints"):
        pytest.importorskip(module, reason=f"building the docs needs {module} (the doc extra)")
    out = tmp_path / "html"
    flags = ["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees")]
    cmd = [sys.executable, "-m", "sphinx", *flags, str(DOCS), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stderr[-5000:]}"
    for page in ("index", "installation", "quickstart", "api", "io", "changelog", "tutorials"):
        assert (out / f"{page}.html").is_file(), page
    assert (out / "generated" / "maestro_sc.tl.embed_samples.html").is_file()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        assert (out / "tutorials" / f"{notebook.stem}.html").is_file(), notebook.name


def test_version_comes_from_the_package_metadata():
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert mst.__version__ == importlib.metadata.version("maestro_sc") == project["version"]
