"""Training keeps freed memory in the C heap (``_utils.retained_heap``), and gives it back."""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys

import pytest

from maestro_sc import _utils

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

CHURN = """
import json, os, resource, torch
from maestro_sc._utils import retained_heap

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def faults():
    # buffers of a few MB allocated and freed in turn, as the steps of a training run do
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        keep = [torch.empty(300_000 * (1 + j % 5)).fill_(1.0) for j in range(12)]
        del keep[::2]
        more = [torch.empty(1_000_000).fill_(2.0) for _ in range(4)]
        del keep, more
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

faults()
out = {"default": faults()}
with retained_heap():
    faults()
    out["inside"], out["rss_inside"] = faults(), rss_mb()
out["rss_after"] = rss_mb()
print(json.dumps(out))
"""


@pytest.mark.skipif(not GLIBC, reason="the heap settings are glibc's (Linux)")
def test_freed_memory_is_reused_inside_and_handed_back_after():
    """Inside, the same allocations fault no pages in; on leaving, the retained memory goes.

    Run in a fresh process: ``mallopt`` settings last for the life of a process.
    """
    run = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["default"] > 10_000  # glibc's defaults hand the blocks back: pages fault in
    assert out["inside"] < 500
    assert out["rss_after"] < out["rss_inside"] - 20  # MB: malloc_trim gave the heap back


class _Libc:
    """Records ``mallopt`` and ``malloc_trim`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_settings_are_put_back_when_the_run_fails(monkeypatch):
    libc = _Libc()
    monkeypatch.setattr(_utils, "_glibc", lambda: libc)
    with pytest.raises(RuntimeError, match="boom"), _utils.retained_heap():
        assert [c[1] for c in libc.calls] == [
            _utils._M_MMAP_THRESHOLD,
            _utils._M_TRIM_THRESHOLD,
            _utils._M_TOP_PAD,
        ]
        raise RuntimeError("boom")
    assert libc.calls[3:] == [
        ("mallopt", _utils._M_TRIM_THRESHOLD, _utils._TRIM_AFTER),
        ("mallopt", _utils._M_TOP_PAD, _utils._TOP_PAD_AFTER),
        ("malloc_trim", 0),
    ]


def test_only_the_outermost_context_changes_the_settings(monkeypatch):
    libc = _Libc()
    monkeypatch.setattr(_utils, "_glibc", lambda: libc)
    with _utils.retained_heap():
        with _utils.retained_heap():
            pass
        assert len(libc.calls) == 3  # the inner context neither set nor restored anything
    assert libc.calls[-1] == ("malloc_trim", 0) and len(libc.calls) == 6
    assert _utils._heap_depth == 0


def test_nothing_is_changed_without_glibc(monkeypatch):
    monkeypatch.setattr(_utils, "_glibc", lambda: None)
    with _utils.retained_heap():
        pass  # no C library to call: entering and leaving must simply work


def test_training_runs_inside_the_retained_heap(monkeypatch, cohort, train):
    from maestro_sc.train import runner

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append("in")
        yield
        entered.append("out")

    monkeypatch.setattr(runner, "retained_heap", recording)
    train(cohort, max_epochs=1)
    assert entered == ["in", "out"]
