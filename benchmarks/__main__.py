"""Run every benchmark and write the table.

    python -m benchmarks                 # the full run (about 25 minutes on 2 cores) -> RESULTS.md
    python -m benchmarks --quick         # every row at toy size, well under a minute
    python -m benchmarks --only 1 2 5    # some rows, printed (--out FILE to write them)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import THREADS, Report, machine, table

HERE = Path(__file__).resolve().parent


def _sections():
    """Row number -> a function(quick) giving its rows; imported here so `--help` is quick."""
    from . import compile, ddp, export, gpu, models, scale, tasks, training, zoo

    return {
        "1": models.forward_backward_rows,
        "2": models.per_node_rows,
        "3": compile.compile_rows,
        "4": lambda quick: [compile.scaling_row(quick)],
        "5": training.speed_rows,
        "6": lambda quick: [training.first_step_row(quick)],
        "7": lambda quick: [training.memory_row(quick)],
        "8": ddp.ddp_rows,
        "9": export.export_rows,
        "10": gpu.gpu_rows,
        "11": tasks.language_model_rows,
        "12": tasks.segmentation_rows,
        "13": tasks.image_folder_rows,
        "14": zoo.family_rows,
        "15": lambda quick: [zoo.first_compile_row(quick)],
        "16": lambda quick: [zoo.import_row(quick)],
        "17": scale.checkpointing_rows,
        "18": scale.fsdp_rows,
        "19": scale.fsdp_gpu_rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, one repetition")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="row numbers to run (default: all)")
    parser.add_argument("--out", type=Path, help="where to write the table "
                        "(default: benchmarks/RESULTS.md, or RESULTS-quick.md with --quick; "
                        "with --only, printed only)")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(THREADS)
    sections = _sections()
    unknown = sorted(set(args.only or ()) - set(sections))
    if unknown:
        parser.error(f"unknown row {', '.join(unknown)}; rows are {', '.join(sections)}")
    report = Report()
    for key, section in sections.items():
        if args.only and key not in args.only:
            continue
        start = time.perf_counter()
        print(f"row {key} ...", end=" ", flush=True, file=sys.stderr)
        got = section(args.quick)
        if isinstance(got, str):  # a section with nothing to measure here says why
            report.notes.append(got)
        else:
            report.rows += got
        print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    title = "yamlnet benchmarks" + (" (--quick: toy sizes, not figures to quote)" if args.quick else "")
    text = table(report, machine(), title)
    out = args.out or (None if args.only else HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md"))
    if out is not None:  # some rows alone do not replace the whole table
        out.write_text(text)
    print(text)
    failed = [r.key for r in report.rows if r.verdict == "**FAIL**"]
    if failed:
        print(f"rows missing their goal: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
