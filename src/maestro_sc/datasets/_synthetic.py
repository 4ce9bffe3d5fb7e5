"""A simulated mass-cytometry cohort with known ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._utils import logger

#: Marker panel: the first 20 are always present (every simulated effect acts on them), the rest
#: are added in this order up to ``n_markers``.
MARKERS: tuple[str, ...] = (
    "CD45", "CD3", "CD4", "CD8", "CD19", "CD20", "CD56", "CD16", "CD14", "CD11c",
    "HLA-DR", "CD123", "CD45RA", "CCR7", "CD27", "CD57", "GranzymeB", "CD127", "CD25", "CD38",
    "CD28", "CD69", "PD-1", "Ki-67",
    "CD33", "CD11b", "CD161", "IgD", "IgM", "CD24", "CD86", "CXCR3", "CCR6", "KLRG1",
    "CD95", "CD39", "HLA-ABC", "CD7", "CD2", "CD5",
)  # fmt: skip
MIN_MARKERS, MAX_MARKERS = 20, len(MARKERS)
STATE_MARKERS = frozenset(
    {"CD38", "CD69", "PD-1", "Ki-67", "GranzymeB", "CD25", "CD86", "CD95", "CD39"}
)

# Mean expression of each population on the arcsinh(x/5) scale (0 = off). Absent = off.
_HLA_ABC = {"HLA-ABC": 3.5}
_T = {"CD45": 4.2, "CD3": 3.8, "CD7": 2.6, "CD2": 3.0, "CD5": 3.0, **_HLA_ABC}
_NK = {"CD45": 4.1, "CD45RA": 3.0, "CD7": 3.0, "CD2": 2.5, "CD38": 2.5, "CD11b": 1.5, **_HLA_ABC}
_B = {"CD45": 4.0, "CD19": 3.0, "CD20": 3.5, "HLA-DR": 3.5, "CD24": 3.0, "CD5": 0.5, **_HLA_ABC}
_MONO = {"CD45": 3.8, "CD4": 1.5, "CD11c": 3.0, "CD33": 2.8, "CD11b": 3.0, "CD86": 2.0, **_HLA_ABC}
PROFILES: dict[str, dict[str, float]] = {
    "CD4 T naive": {**_T, "CD4": 3.2, "CD45RA": 3.5, "CCR7": 2.8, "CD27": 3.0, "CD28": 3.0,
                    "CD127": 2.6, "CD38": 2.0},
    "CD4 T memory": {**_T, "CD4": 3.2, "CD45RA": 0.5, "CCR7": 1.5, "CD27": 2.5, "CD28": 3.0,
                     "CD127": 2.4, "CD25": 0.8, "CD38": 1.0, "CD69": 0.5, "PD-1": 1.2,
                     "HLA-DR": 0.5, "CD161": 1.0, "CXCR3": 1.5, "CCR6": 1.5, "CD95": 2.5},
    "Treg": {**_T, "CD4": 3.2, "CD45RA": 0.8, "CCR7": 1.5, "CD27": 2.5, "CD28": 2.5, "CD127": 0.3,
             "CD25": 3.5, "HLA-DR": 0.8, "PD-1": 1.0, "Ki-67": 0.8, "CD39": 2.5, "CD95": 2.5},
    # CD8 T cells also follow the differentiation axis (``_cd8_axis``) added to this profile.
    "CD8 T": {**_T, "CD8": 3.8, "CD38": 1.0},
    "NK CD56bright": {**_NK, "CD56": 4.0, "CD16": 0.5, "CD27": 1.0, "GranzymeB": 2.0, "CD127": 1.5,
                      "CD25": 1.0, "CD69": 0.8, "CD161": 2.5},
    "NK CD56dim": {**_NK, "CD56": 2.8, "CD16": 3.8, "CD8": 1.0, "CD57": 2.5, "GranzymeB": 3.8,
                   "CD11c": 1.0, "CD161": 2.0, "KLRG1": 2.0},
    "B naive": {**_B, "CD45RA": 3.0, "CCR7": 2.0, "CD38": 2.0, "IgD": 3.0, "IgM": 3.0},
    "B memory": {**_B, "CD45RA": 2.0, "CCR7": 2.0, "CD27": 3.0, "CD11c": 1.0, "IgM": 1.0,
                 "CCR6": 2.0, "CD95": 1.5},
    "Plasmablasts": {"CD45": 3.0, "CD19": 1.2, "CD27": 4.2, "CD38": 4.5, "HLA-DR": 2.5,
                     "Ki-67": 2.5, "CD95": 2.0, **_HLA_ABC},
    "CD14 monocytes": {**_MONO, "CD14": 4.0, "CD16": 0.5, "HLA-DR": 3.0, "CD123": 1.0,
                       "CD45RA": 1.0, "CD38": 2.0},
    "CD16 monocytes": {**_MONO, "CD14": 1.5, "CD16": 3.5, "HLA-DR": 3.5, "CD45RA": 1.5,
                       "CD33": 2.0, "CD11b": 2.0},
    "mDC": {"CD45": 3.8, "CD4": 1.2, "CD11c": 3.8, "HLA-DR": 4.2, "CD123": 1.5, "CD38": 2.0,
            "CD33": 2.0, "CD86": 2.5, **_HLA_ABC},
    "pDC": {"CD45": 3.6, "CD4": 1.5, "HLA-DR": 3.5, "CD123": 4.0, "CD45RA": 2.5, "CCR7": 1.0,
            "GranzymeB": 2.0, "CD38": 2.5, "CD2": 0.8, **_HLA_ABC},
}  # fmt: skip
POPULATIONS: tuple[str, ...] = tuple(PROFILES)
#: Healthy mean fractions of the populations (PBMC-like; normalised to sum 1).
BASE_FRACTIONS = {
    "CD4 T naive": 0.17, "CD4 T memory": 0.15, "Treg": 0.02, "CD8 T": 0.16,
    "NK CD56bright": 0.01, "NK CD56dim": 0.10, "B naive": 0.07, "B memory": 0.03,
    "Plasmablasts": 0.002, "CD14 monocytes": 0.16, "CD16 monocytes": 0.02, "mDC": 0.01,
    "pDC": 0.004,
}  # fmt: skip
#: CD8 T cells are labelled by where they sit on the naive → effector axis.
CD8_LABELS = (("CD8 T naive", 0.3), ("CD8 T memory", 0.7), ("CD8 T effector", 1.01))
CELL_TYPES: tuple[str, ...] = tuple(
    label
    for pop in POPULATIONS
    for label in ([c for c, _ in CD8_LABELS] if pop == "CD8 T" else [pop])
)
DIAGNOSES = ("healthy", "monocytosis", "plasmablast_expansion", "CD8_activation")
#: Per-sample, per-marker staining offset (sd, arcsinh scale).
SAMPLE_OFFSET_SD = 0.15
DIFFICULTIES = {
    # effect scale, sd of the per-sample log-abundance noise, sd of the per-batch marker shift
    "easy": (1.0, 0.3, 0.1),
    "hard": (0.5, 0.4, 0.2),
}


def _smoothstep(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = np.clip((t - lo) / (hi - lo), 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _cd8_axis(t: np.ndarray) -> dict[str, np.ndarray]:
    """Marker means along the CD8 naive (t=0) → memory → effector (t=1) axis.

    CD45RA is lost in memory cells and re-expressed by effectors (TEMRA), as in blood.
    """
    bump = np.sin(np.pi * t)
    return {
        "CD45RA": 3.5 - 2.8 * bump - 0.5 * t,
        "CCR7": 2.8 * (1 - _smoothstep(t, 0.2, 0.6)),
        "CD27": 0.3 + 3.0 * (1 - _smoothstep(t, 0.5, 0.9)),
        "CD28": 0.4 + 2.6 * (1 - _smoothstep(t, 0.4, 0.9)),
        "CD127": 0.3 + 2.2 * (1 - _smoothstep(t, 0.3, 0.8)),
        "CD57": 3.0 * _smoothstep(t, 0.6, 1.0),
        "GranzymeB": 3.8 * _smoothstep(t, 0.4, 0.9),
        "CD56": 1.0 * _smoothstep(t, 0.7, 1.0),
        "CD16": 0.8 * _smoothstep(t, 0.8, 1.0),
        "PD-1": 1.5 * bump,
        "KLRG1": 2.5 * _smoothstep(t, 0.4, 0.9),
        "CD95": 2.5 * _smoothstep(t, 0.0, 0.3),
        "CXCR3": 2.0 * bump,
        "CD11b": 1.5 * _smoothstep(t, 0.6, 1.0),
    }


def _resolve_difficulty(difficulty: str | float) -> tuple[float, float, float]:
    if isinstance(difficulty, str):
        if difficulty not in DIFFICULTIES:
            raise ValueError(
                f"difficulty={difficulty!r} is unknown; use 'easy', 'hard' or an effect-size float "
                "(1.0 = 'easy')."
            )
        return DIFFICULTIES[difficulty]
    scale = float(difficulty)
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(
            f"difficulty={difficulty!r}: an effect-size float must be finite and >= 0."
        )
    _, noise, batch_sd = DIFFICULTIES["easy"]
    return scale, noise, batch_sd


def _cells_per_sample(cells_per_sample, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    if np.isscalar(cells_per_sample):
        lo = hi = int(cells_per_sample)
    else:
        lo, hi = (int(v) for v in cells_per_sample)
    if lo < 1 or hi < lo:
        raise ValueError(
            f"cells_per_sample={cells_per_sample!r}: give an int >= 1 or a (low, high) range with "
            "1 <= low <= high."
        )
    return np.rint(np.exp(rng.uniform(np.log(lo), np.log(hi), n_samples))).astype(np.int64)


def _balanced(levels: tuple[str, ...] | list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """Round-robin labels, shuffled: every level gets n // len(levels) or one more sample."""
    return rng.permutation(np.array([levels[i % len(levels)] for i in range(n)], dtype=object))


def synthetic_cohort(
    n_samples: int = 40,
    *,
    n_markers: int = 24,
    cells_per_sample: int | tuple[int, int] = (500, 3000),
    n_batches: int = 2,
    difficulty: str | float = "easy",
    sample_key: str = "sample",
    random_state: int | None = 0,
) -> Any:
    """Simulate a mass-cytometry cohort with known sample-level effects.

    Cells are PBMC-like and already on the ``arcsinh(x / 5)`` scale: markers that are off sit
    near 0 (small negative values included), expressed markers at about 1–4.5. There are 13
    populations with textbook lineage patterns — CD4 T naive / memory, Treg, CD8 T, NK
    CD56bright / CD56dim, B naive / memory, plasmablasts (rare, about 0.2 %), classical (CD14)
    and non-classical (CD16) monocytes, myeloid DCs and plasmacytoid DCs — and CD8 T cells lie on
    a continuous naive → memory → effector axis (CCR7, CD27, CD28, CD127 lost; GranzymeB, CD57,
    KLRG1 gained; CD45RA lost then re-expressed), labelled ``CD8 T naive`` / ``memory`` /
    ``effector`` by their position on it: 15 ``cell_type`` labels in all.

    Each sample draws its population fractions from a logistic normal around the healthy
    fractions (per-population log-abundance noise with sd ``sigma``: 0.3 for "easy", 0.4 for
    "hard"). With ``s`` the effect scale (1.0 for "easy", 0.5 for "hard", or the float given),
    the sample labels act as follows:

    - ``diagnosis`` (4 balanced classes, assigned round-robin then shuffled):

      - ``healthy``: no effect;
      - ``monocytosis`` (abundance shift of a major population): the log-abundance of
        ``CD14 monocytes`` is raised by ``0.7·s`` (×2.0 for "easy", about 16 % → 28 % of cells);
      - ``plasmablast_expansion`` (rare population): ``Plasmablasts`` log-abundance raised by
        ``s·log 5``, from about 0.2 % to about 1 % of cells for "easy" (0.45 % for "hard");
      - ``CD8_activation`` (marker-state shift without abundance change): CD38 in every CD8 T
        cell raised by ``0.8·s`` arcsinh units (from 1.0 to 1.8 for "easy"); fractions are
        untouched.

    - ``age`` (uniform 20–80 years, weak effect): with ``z = (age − 50) / 30``, the log-ratio
      CD4 T memory : naive rises by ``0.4·s·z`` (naive −0.2·s·z, memory +0.2·s·z) and the mean
      CD8 differentiation position (0.4 on average, per-sample sd 0.08) by ``0.08·s·z`` (more
      effector cells with age).
    - ``batch`` (``n_batches`` levels, balanced, independent of diagnosis): every marker gets a
      per-batch shift (sd 0.1 for "easy", 0.2 for "hard") and scale (``exp`` of a normal with
      sd 0.05) on the arcsinh scale.
    - every sample gets a staining offset per marker (sd 0.15 on the arcsinh scale), which
      blurs per-marker sample means more than cell-population proportions; each cell gets a
      shared intensity factor (sd 0.1) plus marker noise (sd 0.25 on the arcsinh scale, then
      additive instrument noise with sd 2 counts before the transform).

    ``uns["synthetic"]`` records all of this: the effect sizes, the target population and
    marker of each diagnosis, the batch shifts and scales, and the healthy fractions.

    Parameters
    ----------
    n_samples
        Number of samples (one donor each).
    n_markers
        Panel size, 20–40; the first 20 markers (lineage markers and CD38) are always present.
    cells_per_sample
        ``(low, high)``: cells per sample drawn log-uniformly in this range; or a fixed int.
    n_batches
        Number of acquisition batches (at least 1).
    difficulty
        ``"easy"``, ``"hard"`` or an effect scale ``s`` (float, with the "easy" noise levels).
        Measured with 120 samples (k-means(32) proportions or per-marker sample means,
        logistic regression, 5-fold CV, mean of 3 seeds; chance 0.25): "easy" gives 0.54
        (k-means) and 0.46 (means), "hard" 0.36 and 0.35.
    sample_key
        Name of the ``obs`` column holding the sample ids (``"donor"`` replaces the donor
        column, since each donor gives one sample).
    random_state
        Seed; the same seed gives the same cohort.

    Returns
    -------
    AnnData of cells × markers with float32 ``X``; ``var["marker_class"]`` ("type"/"state");
    ``obs``: ``sample_key``, ``donor``, ``diagnosis``, ``age``, ``batch`` (constant within a
    sample) and ``cell_type`` (per cell), categorical except ``age``; ``uns["synthetic"]``.

    Examples
    --------
    >>> import maestro_sc as mst
    >>> adata = mst.datasets.synthetic_cohort(n_samples=8, random_state=0)
    >>> adata.obs["diagnosis"].cat.categories.tolist()
    ['healthy', 'monocytosis', 'plasmablast_expansion', 'CD8_activation']
    """
    from anndata import AnnData

    if int(n_samples) < 1:
        raise ValueError(f"n_samples={n_samples!r}: need at least 1 sample.")
    if not MIN_MARKERS <= int(n_markers) <= MAX_MARKERS:
        raise ValueError(f"n_markers={n_markers!r} must lie in [{MIN_MARKERS}, {MAX_MARKERS}].")
    if int(n_batches) < 1:
        raise ValueError(f"n_batches={n_batches!r}: need at least 1 batch.")
    if sample_key in ("diagnosis", "age", "batch", "cell_type"):
        raise ValueError(
            f"sample_key={sample_key!r} would replace that label; choose another name."
        )
    n_samples, n_markers, n_batches = int(n_samples), int(n_markers), int(n_batches)
    scale, sigma, batch_sd = _resolve_difficulty(difficulty)
    rng = np.random.default_rng(random_state)
    markers = list(MARKERS[:n_markers])
    n_cells = _cells_per_sample(cells_per_sample, n_samples, rng)

    # Sample-level design.
    diagnosis = _balanced(DIAGNOSES, n_samples, rng)
    batches = [f"batch{b + 1}" for b in range(n_batches)]
    batch = _balanced(batches, n_samples, rng)
    age = np.round(rng.uniform(20, 80, n_samples), 1)
    z_age = (age - 50) / 30

    effects = {
        "monocytosis": {"mechanism": "abundance shift", "cell_type": "CD14 monocytes",
                        "log_abundance_shift": 0.7 * scale},
        "plasmablast_expansion": {"mechanism": "rare population expansion",
                                  "cell_type": "Plasmablasts",
                                  "log_abundance_shift": float(scale * np.log(5.0))},
        "CD8_activation": {"mechanism": "marker state shift", "cell_type": "CD8 T",
                           "marker": "CD38", "shift": 0.8 * scale},
    }  # fmt: skip
    age_effect = {
        "naive_memory_log_ratio_per_unit_z": 0.4 * scale,
        "cd8_axis_shift_per_unit_z": 0.08 * scale,
    }

    pops = list(POPULATIONS)
    pidx = {p: i for i, p in enumerate(pops)}
    base = np.array([BASE_FRACTIONS[p] for p in pops])
    base = base / base.sum()
    logits = np.log(base)[None, :] + rng.normal(0.0, sigma, (n_samples, len(pops)))
    for dx in ("monocytosis", "plasmablast_expansion"):
        logits[diagnosis == dx, pidx[effects[dx]["cell_type"]]] += effects[dx][
            "log_abundance_shift"
        ]
    logits[:, pidx["CD4 T naive"]] -= 0.5 * age_effect["naive_memory_log_ratio_per_unit_z"] * z_age
    logits[:, pidx["CD4 T memory"]] += 0.5 * age_effect["naive_memory_log_ratio_per_unit_z"] * z_age
    fractions = np.exp(logits - logits.max(axis=1, keepdims=True))
    fractions /= fractions.sum(axis=1, keepdims=True)

    # Population means (arcsinh scale) as a dense table.
    m_idx = {m: j for j, m in enumerate(markers)}
    mu = np.zeros((len(pops), n_markers))
    for p, prof in PROFILES.items():
        for m, v in prof.items():
            if m in m_idx:
                mu[pidx[p], m_idx[m]] = v

    batch_shift = rng.normal(0.0, batch_sd, (n_batches, n_markers))
    batch_scale = np.exp(rng.normal(0.0, 0.05, (n_batches, n_markers)))
    sample_offset = rng.normal(0.0, SAMPLE_OFFSET_SD, (n_samples, n_markers))

    # Cells: population per cell, then expression, all samples at once.
    counts = np.stack([rng.multinomial(n, f) for n, f in zip(n_cells, fractions)])
    sample_of_cell = np.repeat(np.arange(n_samples), n_cells)
    pop_of_cell = np.concatenate(
        [rng.permutation(np.repeat(np.arange(len(pops)), c)) for c in counts]
    )
    total = int(n_cells.sum())
    level = mu[pop_of_cell]

    cd8 = pop_of_cell == pidx["CD8 T"]
    axis_mean = 0.4 + age_effect["cd8_axis_shift_per_unit_z"] * z_age
    axis_mean = np.clip(axis_mean + rng.normal(0.0, 0.08, n_samples), 0.05, 0.95)
    conc = 3.0
    m8 = axis_mean[sample_of_cell[cd8]]
    t = rng.beta(m8 * conc, (1 - m8) * conc)
    for m, values in _cd8_axis(t).items():
        if m in m_idx:
            level[cd8, m_idx[m]] += values
    act = cd8 & (diagnosis[sample_of_cell] == "CD8_activation")
    level[act, m_idx["CD38"]] += effects["CD8_activation"]["shift"]

    expressed = level > 0
    signal = level + rng.normal(0.0, 0.25, (total, n_markers))
    signal += expressed * rng.normal(0.0, 0.1, (total, 1))
    raw = 5.0 * np.sinh(signal) + rng.normal(0.0, 2.0, (total, n_markers))
    x = np.arcsinh(raw / 5.0) + sample_offset[sample_of_cell]
    b_idx = pd.Index(batches).get_indexer(batch)[sample_of_cell]
    x = x * batch_scale[b_idx] + batch_shift[b_idx]

    labels = np.array(pops, dtype=object)[pop_of_cell]
    bounds = np.array([hi for _, hi in CD8_LABELS])
    labels[cd8] = np.array([c for c, _ in CD8_LABELS], dtype=object)[
        np.searchsorted(bounds, t, side="right")
    ]

    width = len(str(n_samples))
    sample_ids = [f"S{i + 1:0{width}d}" for i in range(n_samples)]
    donor_ids = [f"D{i + 1:0{width}d}" for i in range(n_samples)]
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical.from_codes(sample_of_cell, categories=donor_ids),
            # With sample_key="donor" the sample ids take the donor column's place.
            sample_key: pd.Categorical.from_codes(sample_of_cell, categories=sample_ids),
            "diagnosis": pd.Categorical(diagnosis[sample_of_cell], categories=list(DIAGNOSES)),
            "age": age[sample_of_cell],
            "batch": pd.Categorical(batch[sample_of_cell], categories=batches),
            "cell_type": pd.Categorical(labels, categories=list(CELL_TYPES)),
        }
    )
    within = np.arange(total) - np.repeat(np.cumsum(n_cells) - n_cells, n_cells)
    obs.index = pd.Index([f"{sample_ids[s]}-{c}" for s, c in zip(sample_of_cell, within)])
    var = pd.DataFrame(
        {"marker_class": pd.Categorical(["state" if m in STATE_MARKERS else "type" for m in markers],
                                        categories=["type", "state"])},
        index=pd.Index(markers),
    )  # fmt: skip
    adata = AnnData(X=x.astype(np.float32), obs=obs, var=var)
    adata.uns["synthetic"] = {
        "difficulty": str(difficulty),
        "effect_scale": float(scale),
        "abundance_noise_sd": float(sigma),
        "random_state": -1 if random_state is None else int(random_state),
        "diagnosis": effects,
        "age": {"range": [20.0, 80.0], "z": "(age - 50) / 30", **age_effect},
        "batch": {
            "shift": batch_shift,
            "scale": batch_scale,
            "batches": batches,
            "shift_sd": batch_sd,
        },
        "healthy_fractions": dict(zip(pops, base.tolist())),
        "sample_offset_sd": SAMPLE_OFFSET_SD,
        "transform": "arcsinh(x / 5)",
    }
    logger.info(
        "synthetic_cohort: %d samples, %d cells, %d markers, difficulty %s",
        n_samples, total, n_markers, difficulty,
    )  # fmt: skip
    return adata
