"""The ``maestro-sc`` command line: ``demo``, ``pretrain``, ``embed``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import maestro_sc as mst

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    adata = mst.datasets.synthetic_cohort(n_samples=args.n_samples, random_state=args.seed)
    print(
        f"Synthetic cohort: {adata.n_obs:,} cells x {adata.n_vars} markers in "
        f"{adata.obs['sample'].nunique()} samples (diagnosis: 4 classes)."
    )
    length = {} if args.max_epochs is None else {"max_epochs": args.max_epochs, "min_steps": 0}
    model = mst.tl.pretrain(
        adata, "sample", preset="cpu", random_state=args.seed, progress=not args.quiet, **length
    )
    print(
        f"Trained the 'cpu' preset: {model.summary['steps']} steps in "
        f"{model.summary['train_seconds']:.0f} s."
    )
    sdata = mst.tl.embed_samples(adata, "sample", model=model, progress=not args.quiet)
    mst.tl.linear_probe(sdata, "diagnosis", use_rep="X_maestro")
    acc = mst.get.result_df(sdata, "probe_diagnosis_X_maestro").set_index("metric").loc["accuracy"]
    chance = sdata.obs["diagnosis"].value_counts(normalize=True).max()
    print(
        f"Linear probe on diagnosis (5-fold CV x 10): accuracy {acc['mean']:.2f} ± "
        f"{acc['std']:.2f} (chance {chance:.2f})."
    )
    h5ad = out / "samples.h5ad"
    sdata.write_h5ad(h5ad)
    model.save(out / "model", overwrite=True)
    mst.pl.embedding(sdata, color=["diagnosis", "batch"], show=False, save=out / "umap.png")
    mst.tl.nn_contingency(sdata, "diagnosis")
    mst.pl.nn_contingency(sdata, "diagnosis", show=False, save=out / "nn_contingency.png")
    print(f"Wrote {h5ad}, {out / 'model'}/, {out / 'umap.png'}, {out / 'nn_contingency.png'}.")
    print(f"Demo took {time.perf_counter() - start:.0f} s.")
    return 0


def _read(path: str, backed: bool):
    import anndata as ad

    return ad.read_h5ad(path, backed="r" if backed else None)


def _pretrain(args: argparse.Namespace) -> int:
    import maestro_sc as mst

    output = Path(args.output)
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        # checked before training, not after it
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite.")
    adata = _read(args.input, args.backed)
    overrides = {"max_epochs": args.max_epochs} if args.max_epochs is not None else {}
    model = mst.tl.pretrain(
        adata,
        args.sample_key,
        preset=args.preset,
        layer=args.layer,
        random_state=args.seed,
        sigterm_dir=output,  # a SIGTERM saves the model trained so far where it was asked for
        **overrides,
    )
    path = model.save(output, overwrite=args.overwrite)
    print(f"Saved the model to {path}/.")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import maestro_sc as mst

    adata = _read(args.input, args.backed)
    model = mst.tl.MaestroModel.load(args.model) if args.model else None
    sdata = mst.tl.embed_samples(
        adata,
        args.sample_key,
        model=model,
        preset=args.preset,
        layer=args.layer,
        random_state=args.seed,
    )
    sdata.write_h5ad(args.output)
    print(f"Wrote {sdata.n_obs} sample embeddings to {args.output} (obsm['X_maestro']).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``maestro-sc``."""
    parser = argparse.ArgumentParser(
        prog="maestro-sc", description="MAESTRO sample embeddings for cytometry cohorts."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synthetic cohort -> train -> embed -> figures")
    demo.add_argument("--out", default="maestro_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--n-samples", type=int, default=40)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--max-epochs", type=int, default=None, help="training epochs (default: the preset's)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    for name, func, help_ in (
        ("pretrain", _pretrain, "train a model on an .h5ad of cells and save it"),
        ("embed", _embed, "embed every sample of an .h5ad of cells into a sample .h5ad"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("input", help="h5ad of cells (values already arcsinh-transformed)")
        p.add_argument("--sample-key", required=True, help="obs column with sample ids")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--preset", default="auto", choices=["auto", "cpu", "gpu", "paper"])
        p.add_argument("--layer", default=None)
        p.add_argument("--backed", action="store_true", help="read the h5ad backed ('r')")
        p.add_argument("--seed", type=int, default=0)
        if name == "pretrain":
            p.add_argument("--max-epochs", type=int, default=None)
            p.add_argument("--overwrite", action="store_true")
        else:
            p.add_argument("--model", default=None, help="saved model folder (default: train)")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``maestro-sc``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError) as err:
        print(f"maestro-sc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
