"""The FCS ``$SPILL``/``$SPILLOVER`` keyword, parsed into a spillover matrix.

One parser for the FCS reader (which stores the matrix) and for compensation (which accepts the
keyword's text): ``n,name_1,...,name_n,v_11,v_12,...,v_nn``, the coefficients row by row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def parse_spill(text: Any) -> pd.DataFrame:
    """Parse the keyword's text into an ``n × n`` DataFrame indexed by the channel names.

    Whitespace around the text and each field, a trailing comma and a count written as a
    float (``"3.0"``, as some exporters do) are accepted.

    Raises
    ------
    ValueError
        If the count is not a positive whole number, the text does not hold exactly ``n``
        names and ``n × n`` coefficients, or a coefficient is not a number.

    Examples
    --------
    >>> parse_spill("2, FL1-A, FL2-A, 1, 0.1, 0.05, 1,").to_numpy().tolist()
    [[1.0, 0.1], [0.05, 1.0]]
    """
    parts = [p.strip() for p in str(text).strip().strip(",").split(",")]
    try:
        count = float(parts[0])
    except ValueError:
        count = float("nan")
    if not (np.isfinite(count) and count.is_integer() and count > 0):
        raise ValueError(
            f"Malformed $SPILL keyword: it must start with the number of channels, got "
            f"{parts[0]!r}."
        )
    n = int(count)
    if len(parts) != 1 + n + n * n:
        raise ValueError(
            f"Malformed $SPILL keyword: {n} channels need {1 + n + n * n} fields (the count, "
            f"{n} names, {n * n} coefficients), got {len(parts)}."
        )
    names = parts[1 : n + 1]
    try:
        values = np.asarray(parts[n + 1 :], dtype=np.float64).reshape(n, n)
    except ValueError as err:
        raise ValueError(
            f"Malformed $SPILL keyword: a coefficient is not a number ({err})."
        ) from None
    return pd.DataFrame(values, index=names, columns=names)
