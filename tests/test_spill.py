"""The one $SPILL/$SPILLOVER parser behind the FCS reader and compensation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import maestro_sc as mst
from maestro_sc._spill import parse_spill
from maestro_sc.io._fcs_text import _parse_spill
from maestro_sc.pp._compensate import as_spillover

EXPECTED = [[1.0, 0.1], [0.05, 1.0]]


@pytest.mark.parametrize(
    "text",
    [
        "2,FL1-A,FL2-A,1,0.1,0.05,1",
        " 2, FL1-A ,FL2-A,1,0.1,0.05,1,",  # spaces and a trailing comma
        "2.0,FL1-A,FL2-A,1,0.1,0.05,1\n",  # the count as a float, a final newline
    ],
)
def test_reader_and_compensation_read_the_same_matrix(text):
    for frame in (parse_spill(text), _parse_spill(text, "x.fcs"), as_spillover(text)):
        assert list(frame.columns) == list(frame.index) == ["FL1-A", "FL2-A"]
        np.testing.assert_allclose(frame.to_numpy(), EXPECTED)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "number of channels"),
        ("2.5,A,B,1,0,0,1", "number of channels"),
        ("0", "number of channels"),
        ("two,A,B,1,0,0,1", "number of channels"),
        ("2,A,B,1,0,0", "need 7 fields"),
        ("2,A,B,1,0,0,1,9", "need 7 fields"),
        ("2,A,B,1,x,0,1", "not a number"),
    ],
)
def test_malformed_keyword_raises_for_compensation_and_warns_in_the_reader(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_spill(text)
    with pytest.raises(ValueError, match=problem):
        mst.pp.compensate(ad.AnnData(np.ones((3, 2), np.float32)), spillover=text)
    with pytest.warns(UserWarning, match="no spillover is stored"):
        assert _parse_spill(text, "x.fcs") is None
