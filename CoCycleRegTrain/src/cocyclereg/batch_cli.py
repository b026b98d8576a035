"""``cocyclereg batch``: the command-line face of :mod:`cocyclereg.inference.batch`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Register every pair of a manifest, each into OUTPUT/<id>/, resumably.

The manifest is a CSV file with a header: id,fixed,moving are required; labels (moving-side
labelmaps, ';'-separated), fixed_labels (their fixed-side counterparts, same order: Dice and
HD95 are reported), model, fixed_modality and moving_modality override the options below for
their row. Relative paths are read from the manifest's folder. For example:

  id,fixed,moving,labels,fixed_labels
  sub-01,sub-01/t2.nii.gz,sub-01/t1.nii.gz,sub-01/t1_aseg.nii.gz,sub-01/t2_aseg.nii.gz
  sub-02,sub-02/t2.nii.gz,sub-02/t1.nii.gz,,

Each pair folder holds transform.h5, inverse-transform.h5, warped_<moving modality>.nii.gz,
warped_<labels name>.nii.gz, jacobian.nii.gz and summary.json; it appears only when complete.
OUTPUT/results.csv gives each pair's status, seconds, folded voxels, Dice and HD95, and error.
Run the same command again after a crash or Ctrl-C: complete pairs registered with the same
inputs, model and options are skipped, the rest are registered. A pair that fails is
recorded and the batch goes on; the exit status is 1 if any pair failed.

  cocyclereg batch --manifest pairs.csv --output results --workers 2
  cocyclereg batch --manifest pairs.csv --output results --scheduler tcp://127.0.0.1:8786
"""


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_batch_command(commands) -> argparse.ArgumentParser:
    """Add ``batch`` to the ``cocyclereg`` subcommands ``commands``."""
    from cocyclereg.cli import add_register_options

    batch = commands.add_parser(
        "batch",
        help="register every pair of a CSV manifest, resumably, locally or on a Dask cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
    )
    batch.add_argument("--manifest", required=True, type=Path, help="CSV file of pairs")
    batch.add_argument("--output", required=True, type=Path, help="folder for the results")
    # The options of `cocyclereg register` that apply to every pair, with its defaults.
    add_register_options(batch)
    batch.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="registration processes on this machine, the cores split between them "
        "(default 1: one process, the model loaded once)",
    )
    batch.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the pairs on the workers of this Dask distributed scheduler "
        '(tcp://HOST:PORT; pip install "cocyclereg[distributed]"); --workers is then unused',
    )
    batch.add_argument(
        "--force", action="store_true", help="register every pair again, even complete ones"
    )
    batch.set_defaults(handler=run_batch)
    return batch


def run_batch(args: argparse.Namespace) -> int:
    """Run the batch with a progress bar; write ``results.csv``; 1 if any pair failed."""
    from tqdm import tqdm

    from cocyclereg.cli import register_keywords
    from cocyclereg.inference.batch import RegistrationSettings, ResultsTable, register_many
    from cocyclereg.inference.manifest import RESULTS_NAME, read_manifest

    pairs = read_manifest(args.manifest)
    keywords = register_keywords(args)
    settings = RegistrationSettings(
        model=args.model, network=keywords.pop("use_network"), **keywords
    )
    results = register_many(
        pairs,
        args.output,
        settings,
        workers=args.workers,
        scheduler=args.scheduler,
        force=args.force,
    )
    table = ResultsTable(pairs, args.output / RESULTS_NAME)
    counts = {"registered": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=len(pairs), unit="pair", file=sys.stderr, dynamic_ncols=True)
    interrupted = arrived = False
    try:
        for result in results:
            arrived = True
            table.add(result)
            counts[result.status] += 1
            if result.status == "failed":
                bar.write(f"{result.id}: failed: {result.error}", file=sys.stderr)
            bar.set_postfix(counts, refresh=False)
            if result.status == "skipped":  # done before: counted, but not in the rate
                bar.initial += 1
                bar.n += 1
                bar.refresh()
            else:
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results.close()
        bar.close()
        # Nothing arrived and nothing was interrupted: the batch did not start (an unknown
        # model, or another batch holds the folder), so an earlier results.csv stays as it is.
        if args.output.is_dir() and (arrived or interrupted):
            table.write()
    done = sum(counts.values())
    print(
        f"{done} of {len(pairs)} pairs: {counts['registered']} registered, {counts['skipped']} "
        f"already complete, {counts['failed']} failed; see {args.output / RESULTS_NAME}"
    )
    if interrupted:
        print("interrupted: run the same command again to finish the rest", file=sys.stderr)
        return 130
    return 1 if counts["failed"] else 0
