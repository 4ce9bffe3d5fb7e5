"""Every tutorial notebook runs from top to bottom, in a reduced size, so a stale one fails CI.

The stored notebooks must also hold the outputs of one full run, in order and without errors.

Each ``tutorials/*.ipynb`` is executed with nbclient on a copy (the repository's file is not
touched) in a fresh temporary working directory, on a kernel that runs this interpreter
(``sys.executable``: a kernelspec written to a temporary ``JUPYTER_PATH``). A first code cell
is injected that makes the work small: the ``cpu`` and ``gpu`` presets (and so ``"auto"``)
become a tiny model trained for one epoch, and the synthetic cohorts (``synthetic_cohort``,
``write_synthetic_fcs``) have at most 16 samples of 200-400 cells; the notebooks' own calls,
arguments and checks run unchanged.

From the temporary directory the relative ``../shared/data`` does not exist and
``$MAESTRO_SC_DATA`` is unset, so real-data sections must skip themselves; where the shared data
is present, the notebooks that use it run a second time with ``$MAESTRO_SC_DATA`` pointing at
it, so those sections run too.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
#: Seconds one cell may run before the notebook fails (the reduced cells take a few seconds).
CELL_TIMEOUT = 300
#: Terminal colour codes in the kernel's tracebacks.
ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: The injected first cell: shrinks the model presets and the synthetic cohorts in the kernel.
SHRINK = """\
# Injected by tests/test_tutorials.py (not in the notebook): a reduced-size run.
import functools as _functools
import inspect as _inspect

import maestro_sc as _mst
from maestro_sc.model import config as _config

_TINY = dict(latent_dim=8, ff_dim=16, n_inducing=4, n_sub=32, n_prototypes=8, head_dim=16,
             head_hidden=16, head_bottleneck=8, max_epochs=1, min_steps=0, batch_size=4)
for _name in ("cpu", "gpu"):  # "auto" resolves to one of these
    _config.PRESETS[_name].update(_TINY)


def _small_cohort(func):
    signature = _inspect.signature(func)

    @_functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            bound = None
        if bound is None:  # a wrong call: let the function itself say what is wrong
            return func(*args, **kwargs)
        bound.apply_defaults()
        # 16 samples keep the 4 diagnosis classes balanced (assigned round-robin).
        bound.arguments["n_samples"] = min(bound.arguments["n_samples"], 16)
        bound.arguments["cells_per_sample"] = (200, 400)
        return func(*bound.args, **bound.kwargs)

    return wrapper


_mst.datasets.synthetic_cohort = _small_cohort(_mst.datasets.synthetic_cohort)
_mst.datasets.write_synthetic_fcs = _small_cohort(_mst.datasets.write_synthetic_fcs)
"""


def _uses_shared_data(path: Path) -> bool:
    """Whether a notebook's code mentions the shared data (then it also runs with the data)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return bool(re.search(r"shared/data|MAESTRO_SC_DATA|read_shared", code))


CASES = [pytest.param(p, False, id=p.stem) for p in NOTEBOOKS] + [
    pytest.param(p, True, id=f"{p.stem}-shared_data") for p in NOTEBOOKS if _uses_shared_data(p)
]


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory) -> Path:
    """A ``JUPYTER_PATH`` whose ``python3`` kernel runs this interpreter."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(root / "kernels" / "python3")  # argv: sys.executable -m ipykernel_launcher
    return root


def test_every_tutorial_is_collected():
    assert {p.name for p in NOTEBOOKS} >= {
        "quickstart.ipynb",
        "evaluation.ipynb",
        "fcs_to_embeddings.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_tutorial_is_a_full_run(path):
    """The stored notebook holds the outputs of one run, top to bottom, without errors."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert None not in counts, (
        f"{path.name}: code cell {counts.index(None)} was not executed; run the notebook top "
        "to bottom and store it with its outputs"
    )
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: cells ran out of order"
    errors = [
        i for i, c in enumerate(code) if any(o["output_type"] == "error" for o in c["outputs"])
    ]
    assert not errors, f"{path.name}: code cells {errors} stored an error"
    assert sum(bool(c["outputs"]) for c in code) >= len(code) // 2


@pytest.mark.slow
@pytest.mark.parametrize(("path", "with_data"), CASES)
def test_tutorial_runs(path, with_data, kernel_path, tmp_path, monkeypatch):
    if with_data and not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    workdir = tmp_path / "run"  # ../shared/data does not exist from here
    workdir.mkdir()
    scratch = tmp_path / "tmp"  # the notebooks' tempfile.mkdtemp() folders, removed with tmp_path
    scratch.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    if with_data:
        monkeypatch.setenv("MAESTRO_SC_DATA", str(SHARED_DATA))
    else:
        monkeypatch.delenv("MAESTRO_SC_DATA", raising=False)

    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable

    nb = nbformat.read(path, as_version=4)
    same_python = f"import sys as _sys\nassert _sys.executable == {sys.executable!r}\n"
    injected = nbformat.v4.new_code_cell(
        same_python + SHRINK, metadata={"tags": ["injected-by-test"]}
    )
    nb.cells.insert(0, injected)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(workdir)}},
    )
    t0 = time.perf_counter()
    error = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        error = err
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a look after a failure
    if error is not None:
        failed = next(
            (
                i
                for i, cell in enumerate(nb.cells)
                if any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            ),
            None,
        )
        where = {None: "a cell", 0: "the injected cell"}.get(
            failed, f"cell {(failed or 0) - 1} (0-based, as stored)"
        )
        pytest.fail(f"{path.name}: {where} raised:\n{ANSI.sub('', str(error))}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s")
