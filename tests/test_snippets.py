"""The Python code blocks of README.md and docs/quickstart.md run as they are written.

Every ```python block of a page runs, in page order, in one namespace per page and in a fresh
working folder, so a stale snippet (a renamed function, an undefined name, a file that is not
there) fails here. Training is kept fast by shrinking the presets (``mst.model.PRESETS``) the
snippets train with, not by editing the pages. A block preceded by ``<!-- no-test -->`` (an HTML
comment, invisible in the rendered page) is skipped; blocks known to fail are listed in
``KNOWN_FAILURES`` and run as strict xfails, so they are reported without failing the suite and
fixing them turns the xfail into an error that asks for the entry to be removed.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/quickstart.md")
NO_TEST = "<!-- no-test -->"

#: ``(page, block number from 1) -> reason`` for blocks that fail and cannot be fixed here.
KNOWN_FAILURES: dict[tuple[str, int], str] = {}

#: Model sizes that train in seconds; every preset a snippet may name is shrunk to them.
TINY = dict(
    latent_dim=8,
    ff_dim=16,
    n_heads=2,
    n_inducing=4,
    n_sub=32,
    n_isab=1,
    decoder="queries",
    decoder_depth=1,
    decoder_block="isab",
    head_dim=16,
    head_hidden=16,
    head_bottleneck=8,
    n_prototypes=8,
    batch_size=4,
    max_epochs=1,
    min_steps=0,
    chunk_size=4096,
)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line, code, skipped)`` of each fenced ``python`` block of a Markdown text.

    ``skipped`` is True when the last non-blank line before the fence is ``<!-- no-test -->``.
    Fences of other languages (``bash``, ``text``, MyST directives) are passed over, and so is
    anything inside them.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        start = i
        i += 1
        body = []
        while i < len(lines):
            end = _FENCE.match(lines[i])
            if end and end["fence"][0] == fence[0] and len(end["fence"]) >= len(fence):
                if not end["info"].strip():
                    break
            body.append(lines[i])
            i += 1
        i += 1
        if info.split()[:1] != ["python"]:
            continue
        previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        indent = len(match["indent"])
        code = "\n".join(line[indent:] if line[:indent].isspace() else line for line in body)
        blocks.append((start + 1, code, previous == NO_TEST))
    return blocks


def test_python_blocks_parser():
    text = "\n".join(
        [
            "text",
            "```python",
            "a = 1",
            "```",
            "```bash",
            "echo '```python'",
            "```",
            NO_TEST,
            "",
            "```python",
            "b = 2",
            "```",
            "~~~~python",
            "```",
            "c = 3",
            "~~~~",
        ]
    )
    assert python_blocks(text) == [
        (2, "a = 1", False),
        (10, "b = 2", True),
        (13, "```\nc = 3", False),
    ]


def _params():
    params = []
    for page in PAGES:
        for number, (line, _, skipped) in enumerate(
            python_blocks((ROOT / page).read_text(encoding="utf-8")), start=1
        ):
            marks = []
            if skipped:
                marks.append(pytest.mark.skip(reason=f"{page}:{line} is marked {NO_TEST}"))
            if (page, number) in KNOWN_FAILURES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(page, number)]))
            params.append(pytest.param(page, number, marks=marks, id=f"{page}:{line}"))
    return params


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory):
    """One namespace and one working folder per page, shared by its blocks in order."""
    import matplotlib

    matplotlib.use("Agg")
    return {
        page: ({"__name__": "__snippet__"}, tmp_path_factory.mktemp(Path(page).stem))
        for page in PAGES
    }


@pytest.fixture
def tiny_presets(monkeypatch):
    from maestro_sc.model import config

    for name in list(config.PRESETS):
        monkeypatch.setitem(config.PRESETS, name, {**config.PRESETS[name], **TINY})


def test_every_page_has_python_blocks():
    for page in PAGES:
        assert python_blocks((ROOT / page).read_text(encoding="utf-8")), page


def test_known_failures_name_existing_blocks():
    for page, number in KNOWN_FAILURES:
        assert page in PAGES
        assert 1 <= number <= len(python_blocks((ROOT / page).read_text(encoding="utf-8")))


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread", "tiny_presets")
@pytest.mark.parametrize(("page", "number"), _params())
def test_snippet_runs(page, number, namespaces, monkeypatch):
    import matplotlib.pyplot as plt

    line, code, _ = python_blocks((ROOT / page).read_text(encoding="utf-8"))[number - 1]
    namespace, folder = namespaces[page]
    monkeypatch.chdir(folder)
    compiled = compile(code, f"{page}:{line}", "exec")
    try:
        with warnings.catch_warnings():
            # plt.show() under the Agg backend says it cannot show anything.
            warnings.filterwarnings("ignore", message=".*non-interactive.*")
            exec(compiled, namespace)
    finally:
        plt.close("all")
