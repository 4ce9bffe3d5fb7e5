"""What training adds: arms of the learning experiment on the synthetic cohorts.

Every arm is the ``cpu`` preset with a few overrides (``ARMS``), trained at the preset's default
length on the same simulated cohorts (120 samples, ``--difficulty``, one cohort per
``--cohorts`` seed) with the same training seeds. Each run is scored with the same probes:

- diagnosis accuracy and macro AUROC (logistic regression, 5-fold CV x 3 repeats);
- pairwise AUROC of each diagnosis against ``healthy`` (one mechanism each: abundance shift,
  rare-population expansion, intensity shift of CD38 in CD8 T cells);
- the same-batch nearest-neighbour rate (chance 0.5);
- the training diagnostics at the end of training (teacher entropy as a fraction of log K,
  distillation KL, prototype drift, contrastive accuracy).

Next to them, for each cohort: the untrained control (``max_epochs=0``, same training seed)
and the baselines (log-ratio k-means(32) and k-means(128) on standardised markers, raw
k-means(128) proportions, FlowSOM 10x10 with 20 metaclusters, marker means)::

    python benchmarks/learning.py jobs --arms control d_con --cohorts 0 1 2 > jobs.txt
    xargs -P 2 -L 1 python benchmarks/learning.py run < jobs.txt     # two at a time
    python benchmarks/learning.py table                              # writes learning.md

Records go to ``results/learning.jsonl`` (one line per run); a run already there is skipped.
Each process uses one torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

RESULTS = Path(__file__).parent / "results"
JSONL = RESULTS / "learning.jsonl"
TABLE = RESULTS / "learning.md"
#: Trained models, for re-scoring without training again (not committed).
MODELS = RESULTS / "_models"

#: One arm = one cause, as overrides of the ``cpu`` preset.
#: The ``cpu`` preset's own settings: (c) + (d) on 256 cells per view for 40 epochs.
_SUB256_X2 = {"w_con": 1.0, "proto_lr_scale": 10.0, "n_sub": 256, "max_epochs": 40}
ARMS: dict[str, dict] = {
    "control": {},
    # (a) informative distillation: a sharper teacher
    "a_sharp_teacher": {"teacher_temp": 0.04},
    # (b) reconstruction only, debiased Sinkhorn divergence, smaller epsilon
    "b_rec_only_debiased": {"w_sd": 0.0, "ot_debiased": True, "ot_epsilon": 0.01},
    # (c) prototypes that learn: 10x their learning rate
    "c_proto_lr10": {"proto_lr_scale": 10.0},
    # (d) sample-level contrastive objective on the embedding
    "d_contrastive": {"w_con": 1.0},
    # (c) + (d) contrastive, and prototypes with 10x their learning rate
    "cd_contrastive_proto_lr10": {"w_con": 1.0, "proto_lr_scale": 10.0},
    # (d) + (e) contrastive with per-view marker offsets and gains
    "de_contrastive_jitter": {"w_con": 1.0, "view_shift": 0.15, "view_scale": 0.05},
    # (e) the batch shortcut: per-view marker offsets and gains at a larger scale
    "e_jitter": {"view_shift": 0.3, "view_scale": 0.1},
    # budget: (c)+(d) with half the cells per view, twice the steps (about the same wall time)
    "cd_sub256_x2": _SUB256_X2,
    # budget: a quarter of the cells per view, 3.15x the steps (about the same wall time)
    "cd_sub128_x315": {**_SUB256_X2, "n_sub": 128, "max_epochs": 63},
    # the same settings as cd_sub256_x2 on the code whose step encodes each view's mask token
    # once and uses a fused AdamW (the same model to float round-off): learning must not change
    "cd_sub256_x2_fast": _SUB256_X2,
    # the same again, on the Sinkhorn whose problems stop on their own (both marginals within
    # the tolerance) and whose over-relaxation factor is re-estimated: a different loss late in
    # training (the old one stopped at the iteration cap), which must not learn less
    "cd_sub256_x2_sk": _SUB256_X2,
    # the same with the Sinkhorn loss capped at 50 iterations instead of 100: late in training
    # the loss runs to its cap on most steps, so this halves its iterations there
    "cd_sub256_x2_cap50": {**_SUB256_X2, "ot_max_iter": 50},
    # a one-block decoder (cross-attention to z, then one ISAB) instead of three: the decoder
    # is about half of a step's arithmetic; the same steps, so any loss is the decoder's
    "cd_sub256_x2_dec1": {**_SUB256_X2, "decoder_depth": 1},
    # the one-block decoder at about the same wall time as cd_sub256_x2_sk: 1.25x the steps
    "cd_sub256_dec1_x125": {**_SUB256_X2, "max_epochs": 50, "decoder_depth": 1},
    # budget: half the cells per view and a narrower feed-forward, 2.4x the steps
    "cd_sub256_ff64_x24": {**_SUB256_X2, "ff_dim": 64, "max_epochs": 48},
    # the preset's settings with each step computed in 2 sub-batches of 4 samples, as on a CPU
    # with 2 or more threads: their own random draws and Sinkhorn batches, the distillation
    # centre and contrastive loss over all 8 (run on one thread here, the parts in turn)
    "cd_sub256_x2_parts2": {**_SUB256_X2, "step_parts": 2},
    # the preset's settings again, on the Sinkhorn loop with fewer calls per iteration (the same
    # iterates to float round-off) and with the retained heap: learning must not change
    "cd_sub256_x2_heap": _SUB256_X2,
}
#: Untrained controls of arms whose architecture differs from the preset's (same seeds).
UNTRAINED = {"untrained_ff64": {"ff_dim": 64}}
#: Every arm states the settings it varies, so a change of the preset's defaults does not
#: change an arm: the 0.1.0 ``cpu`` preset had no contrastive loss and one learning rate, and
#: trained on 512 cells per view for 20 epochs (at least 100 steps).
#: Every step in one batch, as before steps could be computed in parts.
_BASE = {
    "w_con": 0.0,
    "proto_lr_scale": 1.0,
    "n_sub": 512,
    "max_epochs": 20,
    "min_steps": 100,
    "step_parts": 1,
}
ARMS = {name: {**_BASE, **overrides} for name, overrides in ARMS.items()}
MECHANISMS = {
    "monocytosis": "abundance",
    "plasmablast_expansion": "rare",
    "CD8_activation": "intensity",
}
BASELINES = ("kmeans_clr32", "kmeans_clr128", "kmeans128", "flowsom", "means")


def _cohort(seed: int, difficulty: str, n_samples: int):
    import maestro_sc as mst

    return mst.datasets.synthetic_cohort(
        n_samples=n_samples, difficulty=difficulty, random_state=seed
    )


def score(sdata, key: str) -> dict:
    """Probe one representation of ``sdata.obsm``: accuracy, AUROC, per-mechanism AUROC."""
    import maestro_sc as mst

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        dx = mst.tl.linear_probe(
            sdata, "diagnosis", use_rep=key, n_repeats=3, inplace=False
        ).set_index("metric")
        out = {
            "acc": round(float(dx.loc["accuracy", "mean"]), 4),
            "auroc": round(float(dx.loc["auroc", "mean"]), 4),
        }
        labels = sdata.obs["diagnosis"].astype(str).to_numpy()
        for diagnosis, mechanism in MECHANISMS.items():
            exclude = ~np.isin(labels, ["healthy", diagnosis])
            res = mst.tl.linear_probe(
                sdata, "diagnosis", use_rep=key, n_repeats=3, exclude=exclude, inplace=False
            ).set_index("metric")
            out[f"auroc_{mechanism}"] = round(float(res.loc["auroc", "mean"]), 4)
        nn = mst.tl.nn_contingency(sdata, "batch", use_rep=key, inplace=False)
        out["same_batch"] = round(float(nn["agreement"]), 4)
    return out


def _done() -> set[tuple]:
    if not JSONL.exists():
        return set()
    rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    return {(r["arm"], r["difficulty"], r["cohort"], r["train_seed"]) for r in rows}


def _append(record: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    with JSONL.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def run(arm: str, difficulty: str, cohort: int, train_seed: int, n_samples: int) -> None:
    """Train one arm (or compute ``untrained`` / ``baselines``) and append its record."""
    import torch

    torch.set_num_threads(1)
    import maestro_sc as mst

    saved = MODELS / f"{arm}_{difficulty}_{cohort}_{train_seed}"
    if (arm, difficulty, cohort, train_seed) in _done():
        if arm == "baselines" or arm.startswith("untrained") or saved.exists():
            return
        # scored before models were kept: train again (same seeds), keep the model only
        adata = _cohort(cohort, difficulty, n_samples)
        model = mst.tl.pretrain(
            adata, "sample", preset="cpu", random_state=train_seed, progress=False, **ARMS[arm]
        )
        model.save(saved, overwrite=True)
        return
    adata = _cohort(cohort, difficulty, n_samples)
    sdata = mst.tl.aggregate_samples(adata, "sample")
    base = {"arm": arm, "difficulty": difficulty, "cohort": cohort, "train_seed": train_seed}
    base["n_samples"] = n_samples
    if arm == "baselines":
        for name in BASELINES:
            start = time.perf_counter()
            mst.tl.add_baselines(sdata, adata, "sample", [name], random_state=cohort)
            key = f"X_{name}"
            _append({**base, "arm": name, "seconds": round(time.perf_counter() - start, 1),
                      **score(sdata, key)})  # fmt: skip
        _append({**base, "scores": "see rows"})
        return
    if arm.startswith("untrained"):
        overrides = {**UNTRAINED.get(arm, {}), "max_epochs": 0}
    else:
        overrides = dict(ARMS[arm])
    start = time.perf_counter()
    model = mst.tl.pretrain(
        adata, "sample", preset="cpu", random_state=train_seed, progress=False, **overrides
    )
    train_s = time.perf_counter() - start
    model.save(saved, overwrite=True)
    emb = model.embed(adata, "sample", progress=False).to_numpy()
    sdata.obsm["Z"] = emb
    record = {**base, "overrides": overrides, "steps": model.summary["steps"],
              "train_s": round(train_s, 1), **score(sdata, "Z")}  # fmt: skip
    dim = model.config.latent_dim
    if emb.shape[1] > dim:  # the two parts of the embedding, scored alone
        for part, cols in (("z", slice(0, dim)), ("comp", slice(dim, None))):
            sdata.obsm[f"Z_{part}"] = emb[:, cols]
            record[part] = score(sdata, f"Z_{part}")
    h = model.history
    if len(h):
        tail = h.iloc[-10:]
        record["end"] = {
            k: round(float(tail[k].mean()), 4)
            for k in ("rec", "sd", "kl", "teacher_entropy_frac", "proto_drift", "con", "con_acc")
            if k in tail
        }
        record["history"] = {
            k: [round(float(v), 4) for v in h[k].to_numpy()[:: max(1, len(h) // 30)]]
            for k in ("rec", "kl", "teacher_entropy_frac", "proto_drift", "con_acc")
            if k in h
        }
    _append(record)


def codebook_readout(net, adata, k: int = 128, seed: int = 0, layer: int = 0) -> np.ndarray:
    """Centred log-ratio composition of each sample over a k-means codebook of the teacher
    encoder's cell states after ``layer`` blocks (0 = the input ``Linear``)."""
    import torch
    from sklearn.cluster import MiniBatchKMeans

    enc = net.teacher_encoder
    codes = adata.obs["sample"].cat.codes.to_numpy()
    states = []
    with torch.no_grad():
        for s in range(codes.max() + 1):
            h = enc.cells(net._cells(torch.from_numpy(np.asarray(adata.X[codes == s]))))
            for isab in enc.isabs[:layer]:
                h = isab(h)
            states.append(h[0].numpy())
    rng = np.random.default_rng(seed)
    pool = np.concatenate([x[rng.choice(len(x), min(1000, len(x)), replace=False)] for x in states])
    km = MiniBatchKMeans(k, batch_size=4096, n_init=3, random_state=seed).fit(pool)
    feats = []
    for x in states:
        p = np.bincount(km.predict(x), minlength=k) / len(x)
        log_p = np.log(p + 1.0 / (4 * k))
        feats.append(log_p - log_p.mean())
    return np.stack(feats)


def rescore(difficulty: str, n_samples: int) -> None:
    """Score the codebook readout of every saved model (and of the untrained controls)."""
    import torch

    torch.set_num_threads(1)
    import maestro_sc as mst

    out = RESULTS / "learning_codebook.jsonl"
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["arm"], r["cohort"], r["train_seed"]))
    todo = sorted(MODELS.glob(f"*_{difficulty}_*_*"))
    cohorts = sorted({int(p.name.split("_")[-2]) for p in todo})
    for cohort in cohorts:
        adata = _cohort(cohort, difficulty, n_samples)
        sdata = mst.tl.aggregate_samples(adata, "sample")
        paths = [p for p in todo if int(p.name.split("_")[-2]) == cohort]
        seeds = sorted({int(p.name.split("_")[-1]) for p in paths})
        models = [(p.name.rsplit("_", 3)[0], int(p.name.split("_")[-1]), p) for p in paths]
        models += [("untrained", seed, None) for seed in seeds]
        for arm, seed, path in models:
            if (arm, cohort, seed) in done:
                continue
            if path is None:
                model = mst.tl.pretrain(adata, "sample", preset="cpu", max_epochs=0,
                                        random_state=seed, progress=False)  # fmt: skip
            else:
                model = mst.tl.MaestroModel.load(path)
            sdata.obsm["C0"] = codebook_readout(model.net, adata, seed=seed)
            record = {"arm": arm, "difficulty": difficulty, "cohort": cohort,
                      "train_seed": seed, **score(sdata, "C0")}  # fmt: skip
            emb = model.embed(adata, "sample", progress=False).to_numpy()
            dim = model.config.latent_dim
            for part, cols in (("z", slice(0, dim)), ("comp", slice(dim, None))):
                if emb.shape[1] > dim:
                    sdata.obsm[f"Z_{part}"] = emb[:, cols]
                    record[part] = score(sdata, f"Z_{part}")
            with out.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


def _control(arm: str) -> str:
    """The untrained control with the same architecture as ``arm``."""
    overrides = ARMS.get(arm, {})
    for name, arch in UNTRAINED.items():
        if all(overrides.get(k) == v for k, v in arch.items()):
            return name
    return "untrained"


def _rows() -> list[dict]:
    if not JSONL.exists():
        return []
    return [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]


def _interval(diffs: list[float]) -> str:
    """Mean of paired differences with a 95 % t interval."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return f"{d.mean():+.3f} (n=1)"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"


def table() -> str:
    """Markdown tables per difficulty: mean ± s.e. over cohorts, paired differences."""
    rows = [r for r in _rows() if "acc" in r]
    lines = []
    metrics = ("acc", "auroc", "auroc_abundance", "auroc_rare", "auroc_intensity", "same_batch")
    for difficulty in sorted({r["difficulty"] for r in rows}):
        sub = [r for r in rows if r["difficulty"] == difficulty]
        cohorts = sorted({r["cohort"] for r in sub})
        lines += [f"### {difficulty} cohorts (seeds {cohorts}, 120 samples)", ""]
        lines.append(
            "| arm | runs | steps | acc | AUROC | AUROC abundance | AUROC rare | "
            "AUROC intensity | same-batch NN | teacher H / log K | KL | proto drift | "
            "con acc | acc, z part | acc, composition part | acc − untrained [95 % CI] | "
            "acc − best baseline [95 % CI] | intensity AUROC − untrained [95 % CI] |"
        )
        lines.append("|---|---:|---:|" + "---:|" * 15)
        arms = ["untrained", *UNTRAINED, *ARMS, *BASELINES]
        by = {(r["arm"], r["cohort"], r["train_seed"]): r for r in sub}

        def best_baseline(cohort: int, by=by) -> float | None:
            vals = [by[(b, cohort, 0)]["acc"] for b in BASELINES if (b, cohort, 0) in by]
            return max(vals) if vals else None

        for arm in arms:
            runs = [r for r in sub if r["arm"] == arm]
            if not runs:
                continue
            cells = []
            for m in metrics:
                v = np.array([r[m] for r in runs])
                se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
                cells.append(f"{v.mean():.3f} ± {se:.3f}")
            for k in ("teacher_entropy_frac", "kl", "proto_drift", "con_acc"):
                v = [r["end"][k] for r in runs if k in r.get("end", {})]
                cells.append(f"{np.mean(v):.3g}" if v else "")
            for part in ("z", "comp"):
                v = [r[part]["acc"] for r in runs if part in r]
                cells.append(f"{np.mean(v):.3f} (n={len(v)})" if v else "")
            d_untr, d_base, d_int = [], [], []
            for r in runs:
                u = by.get((_control(arm), r["cohort"], r["train_seed"]))
                if u is not None and arm not in BASELINES:
                    d_untr.append(r["acc"] - u["acc"])
                    d_int.append(r["auroc_intensity"] - u["auroc_intensity"])
                b = best_baseline(r["cohort"])
                if b is not None and arm not in BASELINES:
                    d_base.append(r["acc"] - b)
            cells += [_interval(d) if d else "" for d in (d_untr, d_base, d_int)]
            steps = runs[0].get("steps", "")
            lines.append(f"| {arm} | {len(runs)} | {steps} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _codebook_table()
    text = "\n".join(lines)
    TABLE.write_text(text + "\n")
    return text


def compact_table(difficulty: str) -> str:
    """The docs' table: one row per arm, the paired differences with their 95 % intervals."""
    rows = [r for r in _rows() if "acc" in r and r["difficulty"] == difficulty]
    by = {(r["arm"], r["cohort"], r["train_seed"]): r for r in rows}
    lines = [
        "| arm | runs | accuracy | AUROC intensity shift | same-batch NN | "
        "teacher H / log K | KL (nats) | prototype drift | trained − untrained | "
        "− best baseline | intensity AUROC − untrained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ["untrained", *UNTRAINED, *ARMS, *BASELINES]:
        runs = [r for r in rows if r["arm"] == arm]
        if not runs:
            continue

        def mean_se(key, runs=runs):
            v = np.array([r[key] for r in runs])
            se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
            return f"{v.mean():.3f} ± {se:.3f}" if len(v) > 1 else f"{v.mean():.3f}"

        ends = {
            k: [r["end"][k] for r in runs if k in r.get("end", {})]
            for k in ("teacher_entropy_frac", "kl", "proto_drift")
        }
        cells = [mean_se("acc"), mean_se("auroc_intensity"), mean_se("same_batch")]
        cells += [f"{np.mean(v):.2f}" if v else "" for v in ends.values()]
        diffs = ([], [], [])
        if arm not in BASELINES and not arm.startswith("untrained"):
            for r in runs:
                u = by.get((_control(arm), r["cohort"], r["train_seed"]))
                base = [
                    by[(b, r["cohort"], 0)]["acc"] for b in BASELINES if (b, r["cohort"], 0) in by
                ]
                if u is not None:
                    diffs[0].append(r["acc"] - u["acc"])
                    diffs[2].append(r["auroc_intensity"] - u["auroc_intensity"])
                if base:
                    diffs[1].append(r["acc"] - max(base))
        cells += [_interval(d) if d else "" for d in diffs]
        n = (
            f"{len(runs)} ({len({r['cohort'] for r in runs})} cohorts, "
            f"{len({r['train_seed'] for r in runs})} seeds)"
        )
        lines.append(f"| {arm} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(arm: str, reference: str) -> str:
    """Paired differences ``arm - reference`` (same cohort and training seed), per difficulty."""
    rows = [r for r in _rows() if "acc" in r]
    by = {(r["arm"], r["difficulty"], r["cohort"], r["train_seed"]): r for r in rows}
    lines = [
        f"| cohorts | pairs | {arm} − {reference}: accuracy | intensity AUROC "
        "| training time (s), mean of each |",
        "|---|---:|---:|---:|---|",
    ]
    for difficulty in ("easy", "hard"):
        pairs = [
            (r, by[(reference, *key[1:])])
            for key, r in by.items()
            if key[0] == arm and key[1] == difficulty and (reference, *key[1:]) in by
        ]
        if not pairs:
            continue
        acc = [a["acc"] - b["acc"] for a, b in pairs]
        auc = [a["auroc_intensity"] - b["auroc_intensity"] for a, b in pairs]
        seconds = [np.mean([pair[i]["train_s"] for pair in pairs]) for i in (0, 1)]
        times = f"{seconds[0]:.0f} vs {seconds[1]:.0f}"
        lines.append(
            f"| {difficulty} | {len(pairs)} | {_interval(acc)} | {_interval(auc)} | {times} |"
        )
    return "\n".join(lines)


def parts_table() -> str:
    """Accuracy of the embedding's parts alone (``z``, the composition) and of the whole."""
    rows = [r for r in _rows() if "z" in r and "comp" in r]
    lines = [
        "| cohorts | arm | runs | `z` alone | composition alone | whole embedding |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for difficulty in sorted({r["difficulty"] for r in rows}):
        for arm in ["untrained", *ARMS]:
            runs = [r for r in rows if r["arm"] == arm and r["difficulty"] == difficulty]
            if not runs:
                continue
            z, comp, whole = (np.mean([f(r) for r in runs]) for f in (
                lambda r: r["z"]["acc"], lambda r: r["comp"]["acc"], lambda r: r["acc"]))  # fmt: skip
            lines.append(
                f"| {difficulty} | {arm} | {len(runs)} | {z:.3f} | {comp:.3f} | {whole:.3f} |"
            )
    return "\n".join(lines)


def _codebook_table() -> list[str]:
    """The codebook readout of each arm, paired with the untrained control's."""
    path = RESULTS / "learning_codebook.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["### Codebook readout: k-means(128) of the teacher's input-layer cell states", ""]
    lines.append(
        "| data | arm | runs | acc | AUROC intensity | same-batch NN | "
        "acc − untrained codebook [95 % CI] |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    by = {(r["difficulty"], r["arm"], r["cohort"], r["train_seed"]): r for r in rows}
    for difficulty in sorted({r["difficulty"] for r in rows}):
        for arm in ["untrained", *ARMS]:
            runs = [r for r in rows if r["arm"] == arm and r["difficulty"] == difficulty]
            if not runs:
                continue
            diffs = [
                r["acc"] - by[(difficulty, "untrained", r["cohort"], r["train_seed"])]["acc"]
                for r in runs
                if (difficulty, "untrained", r["cohort"], r["train_seed"]) in by
            ]
            acc = np.mean([r["acc"] for r in runs])
            intensity = np.mean([r["auroc_intensity"] for r in runs])
            same = np.mean([r["same_batch"] for r in runs])
            lines.append(
                f"| {difficulty} | {arm} | {len(runs)} | {acc:.3f} | {intensity:.3f} | "
                f"{same:.3f} | {_interval(diffs) if diffs else ''} |"
            )
    return [*lines, ""]


def plot(path: Path, difficulty: str = "easy") -> None:
    """Training diagnostics of each arm (mean over cohorts) against the step, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _rows() if r.get("history") and r["difficulty"] == difficulty]
    panels = (
        ("teacher_entropy_frac", "teacher entropy / log K"),
        ("kl", "distillation KL (nats)"),
        ("proto_drift", "prototype drift (std. units)"),
        ("con_acc", "contrastive accuracy (batch of 8)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 3.4))
    drawn = [arm for arm in ARMS if any(r["arm"] == arm for r in rows)]
    colors = dict(zip(drawn, plt.get_cmap("tab10").colors))  # distinct colours for drawn arms
    for arm in drawn:
        runs = [r for r in rows if r["arm"] == arm]
        for ax, (key, label) in zip(axes, panels):
            curves = [r["history"][key] for r in runs if key in r["history"]]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            y = np.mean([c[:n] for c in curves], axis=0)
            steps = np.linspace(0, runs[0]["steps"], n, endpoint=False)
            ax.plot(steps, y, label=f"{arm} (n={len(curves)})", linewidth=1.3, color=colors[arm])
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("step")
    axes[0].axhline(0.7, color="0.5", linestyle=":", linewidth=1)
    axes[0].set_ylim(0, 1.02)
    axes[1].set_yscale("log")
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=130)


def jobs(arms: list[str], cohorts: list[int], difficulty: str, seeds: list[int]) -> None:
    """Print one ``run`` argument line per job, cheapest first (baselines, untrained)."""
    for seed in seeds:
        for cohort in cohorts:
            if seed == seeds[0]:
                print(f"baselines {difficulty} {cohort} 0")
            print(f"untrained {difficulty} {cohort} {seed}")
    for arm in arms:
        for seed in seeds:
            for cohort in cohorts:
                print(f"{arm} {difficulty} {cohort} {seed}")


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("arm", choices=[*ARMS, "untrained", *UNTRAINED, "baselines"])
    p_run.add_argument("difficulty", choices=["easy", "hard"])
    p_run.add_argument("cohort", type=int)
    p_run.add_argument("train_seed", type=int)
    p_run.add_argument("--n-samples", type=int, default=120)
    p_jobs = sub.add_parser("jobs")
    p_jobs.add_argument("--arms", nargs="+", default=list(ARMS))
    p_jobs.add_argument("--cohorts", type=int, nargs="+", default=[0, 1, 2])
    p_jobs.add_argument("--seeds", type=int, nargs="+", default=[0])
    p_jobs.add_argument("--difficulty", default="easy")
    sub.add_parser("table")
    p_compact = sub.add_parser("compact")
    p_compact.add_argument("difficulty")
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("arm")
    p_cmp.add_argument("reference")
    p_plot = sub.add_parser("plot")
    p_plot.add_argument("path", type=Path)
    p_re = sub.add_parser("rescore")
    p_re.add_argument("--difficulty", default="easy")
    p_re.add_argument("--n-samples", type=int, default=120)
    args = parser.parse_args()
    if args.cmd == "run":
        run(args.arm, args.difficulty, args.cohort, args.train_seed, args.n_samples)
    elif args.cmd == "compact":
        print(parts_table() if args.difficulty == "parts" else compact_table(args.difficulty))
    elif args.cmd == "compare":
        print(compare(args.arm, args.reference))
    elif args.cmd == "plot":
        plot(args.path)
    elif args.cmd == "rescore":
        rescore(args.difficulty, args.n_samples)
    elif args.cmd == "jobs":
        jobs(args.arms, args.cohorts, args.difficulty, args.seeds)
    else:
        print(table())
    sys.exit(0)
