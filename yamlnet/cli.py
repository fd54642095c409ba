"""The `yamlnet` command line.

Exit codes: 0 success, 2 a user error (one located line per problem, no traceback
unless --verbose), 1 an internal failure. torch is imported only by commands that
need it, so `yamlnet --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USER = 0, 1, 2

DESCRIPTION = """\
yamlnet: describe a PyTorch network in YAML; validate it, infer every shape,
and generate a real nn.Module.

examples:
  yamlnet validate specs/*.yaml
  yamlnet summary specs/resnet18.yaml
  yamlnet expand specs/resnet18.yaml --set classes=100
  yamlnet zoo resnet
  yamlnet summary zoo:resnet50
  yamlnet diff zoo:resnet18 zoo:resnet34 --checkpoint runs/r18
  yamlnet compile specs/resnet18.yaml --emit-python resnet18.py --out resnet18.pt
  yamlnet schema > specs/schema.json
  yamlnet train specs/digits_cnn.yaml
  yamlnet train specs/digits_cnn.yaml --set train.epochs=20 --out runs/digits
  yamlnet train specs/digits_cnn.yaml --out runs/digits --resume
  yamlnet train specs/digits_cnn.yaml --nproc 2 --max-restarts 1
  yamlnet train zoo:resnet18 --config finetune.yaml --set 'freeze=[conv1,bn1,"layer*"]'
  yamlnet train specs/digits_cnn.yaml --set 'train.loggers=[csv,tensorboard,mlflow]'
  yamlnet tune specs/digits_cnn.yaml --config sweep.yaml --trials 20 --timeout 3600
  yamlnet lr-find specs/digits_cnn.yaml -o lr_find.png
  yamlnet plot runs/digits_cnn --metrics train/loss,val/accuracy -o curves.svg
  yamlnet eval specs/digits_cnn.yaml --checkpoint runs/digits
  yamlnet train specs/zoo/gpt.yaml --out runs/gpt
  yamlnet generate specs/zoo/gpt.yaml --checkpoint runs/gpt --prompt "The spec"
  yamlnet import torchvision.models:resnet18 --input x=[N,3,224,224] -o resnet18.yaml
"""


class UserError(Exception):
    """A mistake on the command line (not in a spec)."""


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    from .runtime.launch import launched  # (no torch: `--help` stays quick)

    if launched():
        # a distributed worker: its run is over, files closed and process group left.
        # Leave now, without the interpreter's teardown, where Gloo's threads can still
        # abort the process (SIGABRT) and turn a clean exit code into a crash.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER
    from .compiler.errors import SpecError
    from .runtime.errors import TrainingError

    try:
        if args.plugin:
            from .compiler.registry import load_plugins

            load_plugins(args.plugin)
        return args.run(args) or EXIT_OK
    except (SpecError, UserError) as err:
        if args.verbose:
            import traceback

            traceback.print_exc()
        if _says(err):
            _error(f"error: {err}" if isinstance(err, UserError) else str(err))
        return EXIT_USER
    except TrainingError as err:  # a run (or a study) that stopped: its code says how
        if args.verbose:
            import traceback

            traceback.print_exc()
        if _says(err):
            _error(f"error: {err}")
        return getattr(err, "exit_code", EXIT_FAILURE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as err:  # noqa: BLE001 - last resort: one line, traceback on request
        if args.verbose:
            import traceback

            traceback.print_exc()
        _error(f"internal error: {type(err).__name__}: {err} (run with --verbose for the traceback)")
        return EXIT_FAILURE


def _error(text: str) -> None:
    """Print an error to stderr with every control and bidi character escaped: it may
    echo names, paths and values from the command line or from files."""
    from .compiler.errors import printable

    print(printable(text), file=sys.stderr)


def _says(err: BaseException) -> bool:
    """Whether this process prints `err`: of an error every rank of a distributed run
    raised alike (marked all_ranks), rank 0 alone prints it."""
    return not getattr(err, "all_ranks", False) or os.environ.get("RANK", "0") == "0"


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    def common_options(default):
        # given before or after the command; SUPPRESS keeps a subcommand from resetting them
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                            help="show tracebacks")  # fmt: skip
        parser.add_argument("--plugin", action="append", default=default([]), metavar="MODULE",
                            help="import MODULE first; it may register ops (repeatable)")  # fmt: skip
        return parser

    common = common_options(lambda value: value)
    sub_common = common_options(lambda value: argparse.SUPPRESS)
    spec_opts = argparse.ArgumentParser(add_help=False)
    spec_opts.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                           help="override a variable from the spec's vars: (repeatable)")  # fmt: skip
    model_opts = argparse.ArgumentParser(add_help=False, parents=[spec_opts])  # the commands that build one model
    model_opts.add_argument("--config", metavar="FILE", help="a run's config file (as train takes): its "
                            "vars:, init: and freeze: apply; data:/train: are schema-checked, not used")  # fmt: skip
    run_opts = argparse.ArgumentParser(add_help=False)
    run_opts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a variable (width=64) or a data:/train: setting "
                          "(train.optimizer.lr=0.01); repeatable")  # fmt: skip

    p = argparse.ArgumentParser(prog="yamlnet", description=DESCRIPTION, parents=[common],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=f"yamlnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, func, help_text, *extra):
        c = sub.add_parser(name, help=help_text, description=help_text, parents=[sub_common, *extra])
        c.set_defaults(run=func)
        return c

    c = command("validate", cmd_validate, "check specs: schema, names, graph and shapes (exit 0 or 2)",
                spec_opts)  # fmt: skip
    c.add_argument("specs", nargs="+", metavar="SPEC")
    c.add_argument("--format", choices=["text", "json"], default="text",
                   help="json: machine-readable diagnostics")  # fmt: skip

    c = command("expand", cmd_expand, "print the fully resolved spec (every node, argument and shape)",
                model_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")

    c = command("summary", cmd_summary, "per-node table: name, op, output shape, parameters, "
                "MACs and activation memory", model_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--format", choices=["table", "json", "csv"], default="table")
    c.add_argument("--dim", action="append", default=[], metavar="SYMBOL=SIZE",
                   help="size of a symbolic input dim for MACs and activations (N is 1 unless given)")  # fmt: skip
    c.add_argument("--no-costs", action="store_true", help="leave out MACs and activations "
                   "(no weights are built: faster for big specs)")  # fmt: skip

    c = command("diff", cmd_diff, "compare two specs: nodes added, removed and changed, the "
                "parameter count, and which tensors of a checkpoint load into the second", spec_opts)  # fmt: skip
    c.epilog = "exit status: 0 the same network, 1 different, 2 bad input"
    c.add_argument("a", metavar="A", help="the spec compared from")
    c.add_argument("b", metavar="B", help="the spec compared to (may be the same file as A)")
    c.add_argument("--set-a", action="append", default=[], metavar="VAR=VALUE",
                   help="override a variable of A only (repeatable; after --set)")  # fmt: skip
    c.add_argument("--set-b", action="append", default=[], metavar="VAR=VALUE",
                   help="override a variable of B only (repeatable; after --set)")  # fmt: skip
    c.add_argument("--format", choices=["table", "json"], default="table")
    c.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint file (.pt, .safetensors) or "
                   "run folder: which of its tensors load into B (same name and shape)")  # fmt: skip

    c = command("graph", cmd_graph, "draw the network: svg, png or pdf through Graphviz, or dot "
                "and mermaid text", model_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--format", choices=list(GRAPH_FORMATS), help="default: from --out's extension, "
                   "else dot on standard output")  # fmt: skip
    c.add_argument("-o", "--out", metavar="FILE", help="write here (default: standard output for "
                   "dot/mermaid, NAME.FORMAT for pictures)")  # fmt: skip
    c.add_argument("--depth", type=int, metavar="K", help="collapse blocks nested deeper than K "
                   "into one box each (0: every top-level block is a box)")  # fmt: skip

    c = command("compile", cmd_compile, "build the nn.Module; optionally write standalone Python "
                "and an initialised state_dict", model_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--emit-python", metavar="FILE", help="write a standalone PyTorch module file")
    c.add_argument("--out", metavar="FILE", help="save the initialised state_dict (torch.save)")
    c.add_argument("--seed", type=int, default=0, help="seed for the initial weights (default 0)")

    c = command("train", cmd_train, "train a spec from its data: and train: sections", run_opts)
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--config", metavar="FILE", help="a YAML file with data:, train:, vars:, init:, "
                   "freeze: and tune: that override the spec's")  # fmt: skip
    c.add_argument("--out", metavar="DIR", help="the run folder (default: runs/NAME/version_K)")
    c.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the newest runs/NAME/version_K) "
                   "from its newest good checkpoint; starts afresh if it has none")  # fmt: skip
    c.add_argument("--resume-from", metavar="CKPT", help="continue from this checkpoint file or "
                   "run folder (the run folder is also --out unless given)")  # fmt: skip
    c.add_argument("--force", action="store_true", help="resume even if the network, or the "
                   "run's length under an LR schedule, changed since the checkpoint")  # fmt: skip
    c.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (train.device)")
    c.add_argument("--precision", help="32, bf16-mixed or 16-mixed (train.precision)")
    c.add_argument("--epochs", type=int, help="train.epochs")
    c.add_argument("--max-steps", type=int, help="train.max_steps")
    c.add_argument("--seed", type=int, help="train.seed")
    c.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model, or not (train.compile)")  # fmt: skip
    c.add_argument("--nproc", type=int, metavar="N", help="train on N local processes with "
                   "DistributedDataParallel, started by PyTorch's elastic launcher (for several "
                   "machines use torchrun: see the README)")  # fmt: skip
    c.add_argument("--max-restarts", type=int, default=0, metavar="K", help="with --nproc: "
                   "restart the workers up to K times after a failure; they resume from the last "
                   "checkpoint (default 0)")  # fmt: skip

    c = command("tune", cmd_tune, "search hyperparameters with Optuna: the spec's tune: section "
                "(or --config's) declares the space; every trial is a run folder", run_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--config", metavar="FILE", help="a YAML file with data:, train:, vars: and "
                   "tune: that override the spec's (its tune.space replaces the spec's)")  # fmt: skip
    c.add_argument("--trials", type=int, metavar="N", help="finished trials the study aims at, "
                   "over all its processes (tune.trials; default 20)")  # fmt: skip
    c.add_argument("--timeout", type=float, metavar="SECONDS", help="start no trial after this "
                   "long (the running one finishes)")  # fmt: skip
    c.add_argument("--out", metavar="DIR", help="the study folder: study.db and a run folder per "
                   "trial, STUDY/trial_K (default: runs/NAME-tune)")  # fmt: skip
    c.add_argument("--study", metavar="NAME", help="the study's name in the storage (tune.study; "
                   "default: the spec's name)")  # fmt: skip
    c.add_argument("--storage", metavar="URL", help="an Optuna RDB URL (tune.storage; default "
                   "sqlite:///DIR/study.db); processes on one storage share the study")  # fmt: skip

    c = command("eval", cmd_eval, "loss and metrics of a checkpoint on the spec's data", run_opts)
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint file or a run folder (its best.pt)")  # fmt: skip
    c.add_argument("--split", choices=["val", "train"], default="val")
    c.add_argument("--config", metavar="FILE", help="data:/train: overrides, as for train")
    c.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    c.add_argument("--format", choices=["text", "json"], default="text")

    c = command("predict", cmd_predict, "run a checkpoint (or weights file) on new samples",
                run_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint file or a run folder (its best.pt)")  # fmt: skip
    c.add_argument("--input", required=True, metavar="FILE",
                   help="an image, a folder of images (searched recursively: a class-folder "
                   "set works), a .csv (header or not), .npz or .pt")  # fmt: skip
    c.add_argument("--out", metavar="FILE", help="write predictions: .csv (a row per sample, "
                   "named by file; masks go to FILE_masks/ as PNGs), .pt or .npz (the raw "
                   "outputs); default: CSV rows on stdout")  # fmt: skip
    c.add_argument("--config", metavar="FILE", help="data:/train: overrides, as for train")
    c.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    c.add_argument("--batch-size", type=int, default=256)

    c = command("generate", cmd_generate, "continue a text prompt with a trained language model",
                run_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint file or a run folder (its best.pt)")  # fmt: skip
    c.add_argument("--prompt", required=True, help="the text to continue")
    c.add_argument("--max-new-tokens", type=int, default=200, metavar="K", help="tokens to add (200; at most 100,000)")
    c.add_argument("--temperature", type=float, default=1.0, help="divides the scores: below 1 is "
                   "more predictable, above 1 more varied (1.0)")  # fmt: skip
    c.add_argument("--top-k", type=int, metavar="K", help="draw from the K likeliest tokens only")
    c.add_argument("--seed", type=int, default=0, help="the same seed gives the same text (0)")
    c.add_argument("--config", metavar="FILE", help="data:/train: overrides, as for train")
    c.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")

    c = command("export", cmd_export, "export for deployment (onnx, torchscript, pt2), verified "
                "in a fresh process", spec_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--format", required=True, choices=["onnx", "torchscript", "pt2"])
    c.add_argument("--checkpoint", metavar="CKPT", help="weights from a checkpoint file or run "
                   "folder (default: the freshly initialised model)")  # fmt: skip
    c.add_argument("--out", metavar="FILE", help="the artifact (default: NAME.onnx/.ts/.pt2)")
    c.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    c.add_argument("--onnx-exporter", choices=["dynamo", "legacy"], default="dynamo",
                   help="torch.onnx.export(dynamo=True) (default) or the legacy exporter")  # fmt: skip
    c.add_argument("--trace", action="store_true", help="TorchScript by tracing, not scripting")
    c.add_argument("--no-verify", action="store_true", help="skip the fresh-process check")
    c.add_argument("--atol", type=float, default=1e-5, help="verification tolerance (1e-5)")
    c.add_argument("--rtol", type=float, default=1e-4, help="verification tolerance (1e-4)")
    c.add_argument("--dim", action="append", default=[], metavar="SYMBOL=SIZE",
                   help="example size of a symbolic dim (default: batch 2, others 16)")  # fmt: skip
    c.add_argument("--static", action="append", default=[], metavar="SYMBOL",
                   help="keep a symbolic dim fixed at its example size in the artifact")  # fmt: skip

    c = command("import", cmd_import, "write a spec for an existing nn.Module (traced with "
                "torch.fx), checked to load its state_dict and give its outputs")  # fmt: skip
    c.add_argument("target", metavar="MODULE:ATTR", help="a module instance, class or function: "
                   "torchvision.models:resnet18, mypkg.nets:Net or path/to/file.py:Net (this runs "
                   "that code)")  # fmt: skip
    c.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument for the class or function (YAML value; repeatable)")  # fmt: skip
    c.add_argument("--input", action="append", default=[], metavar="[NAME=]SHAPE[:DTYPE]",
                   help="each forward input's shape, in order: x=[N,3,224,224] or "
                   "tokens=[N,T]:int64 (names are symbolic dims)")  # fmt: skip
    c.add_argument("--dim", action="append", default=[], metavar="SYMBOL=SIZE",
                   help="the size a symbolic dim takes for tracing and the check "
                   "(default: N=3, the others 8, 12, 16, ...)")  # fmt: skip
    c.add_argument("-o", "--out", metavar="FILE", help="write the spec here (default: standard output)")
    c.add_argument("--name", help="the spec's name (default: ATTR, in snake_case)")
    c.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    c.add_argument("--no-check", action="store_true", help="skip compiling the spec back and "
                   "comparing it with the module")  # fmt: skip

    c = command("zoo", cmd_zoo, "list the model zoo: each family (zoo:NAME, usable wherever a "
                "spec is named) and its variants with the variables that make them")  # fmt: skip
    c.add_argument("family", nargs="?", help="one family: its variants in full")
    c.add_argument("--format", choices=["table", "json"], default="table")

    c = command("plot", cmd_plot, "training and validation curves of runs from their metrics.csv "
                "(png, svg or pdf); several runs, or a sweep's trials, overlaid")  # fmt: skip
    c.add_argument("runs", nargs="+", metavar="RUN", help="a run folder, or a folder of runs (a "
                   "study's trial_K, a spec's version_K): each run inside")  # fmt: skip
    c.add_argument("-o", "--out", metavar="FILE", default="plot.png",
                   help="the picture: .png, .svg or .pdf (default: plot.png here)")  # fmt: skip
    c.add_argument("--metrics", metavar="A,B", help="the columns to draw, a subplot each (default: "
                   "train/loss and every val/ metric)")  # fmt: skip
    c.add_argument("--x", choices=["step", "epoch", "time"], default="step",
                   help="the x axis: optimizer steps (default), epochs, or seconds since the start")  # fmt: skip

    c = command("lr-find", cmd_lr_find, "learning-rate range test on the spec's data, model and "
                "optimizer: the loss as the LR grows, and a suggested LR (writes no run)", run_opts)  # fmt: skip
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--config", metavar="FILE", help="data:/train: overrides, as for train")
    c.add_argument("--min-lr", type=float, default=1e-7, help="the first LR (default 1e-7)")
    c.add_argument("--max-lr", type=float, default=1.0, help="the last LR (default 1)")
    c.add_argument("--steps", type=int, default=100, help="optimizer steps from --min-lr to --max-lr, "
                   "fewer if the loss diverges first (default 100)")  # fmt: skip
    c.add_argument("-o", "--out", metavar="FILE", help="also draw loss against LR: .png, .svg or "
                   ".pdf (default: no picture)")  # fmt: skip
    c.add_argument("--format", choices=["text", "json"], default="text")

    c = command("checkpoint", cmd_checkpoint, "work with a run's checkpoints")
    c.add_argument("action", choices=["consolidate"], help="consolidate: a sharded checkpoint (what "
                   "train.strategy: fsdp writes, a step-N.dcp folder) as one file")  # fmt: skip
    c.add_argument("source", metavar="RUN", help="a run folder (its newest good sharded checkpoint) "
                   "or a step-N.dcp folder")  # fmt: skip
    c.add_argument("--out", metavar="FILE", help="a .pt file (a whole checkpoint: resumes, evaluates, "
                   "exports) or .safetensors (the weights); default: RUN/step-N.pt")  # fmt: skip

    c = command("schema", cmd_schema, "print the JSON Schema of specs (for editors)")
    c.add_argument("--out", metavar="FILE", help="write it to FILE instead of stdout")
    return p


def _overrides(items: list[str], flag: str = "--set") -> dict[str, Any]:
    from .compiler.expand import parse_override

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects VAR=VALUE, got '{item}'")
        out[key.strip()] = parse_override(text)
    return out


def _compile(args, path: str, build: bool = False):
    from pathlib import Path

    from .compiler.compile import compile_spec
    from .runtime.config import load_run, split_overrides, weights_overlay

    if getattr(args, "config", None) is not None:  # the run's vars:, init:, freeze:, as train builds it
        source, cfg, var_over = load_run(Path(path), args.config, _overrides(args.set))
        return compile_spec(source, {**cfg.vars, **var_over}, build=build, overlay=cfg.weights_overlay())
    run, variables = split_overrides(_overrides(args.set))  # data./train. keys are the runtime's
    return compile_spec(Path(path), variables, build=build,  # a path, never YAML text
                        overlay=weights_overlay(run))  # --set init=... / freeze=[...]


def cmd_zoo(args) -> int:
    from .compiler.errors import did_you_mean
    from .compiler.zoo import examples, families

    found = families()
    if args.family is not None:
        wanted = args.family.removeprefix("zoo:")
        variant_of = {v: f["family"] for f in found for v in f["variants"]}
        wanted = variant_of.get(wanted, wanted)  # zoo resnet50: resnet's table
        found = [f for f in found if f["family"] == wanted]
        if not found:
            names = [f["family"] for f in families()]
            raise UserError(f"no zoo family '{wanted}' ({did_you_mean(wanted, names) or 'families: ' + ', '.join(names)})")
    if args.format == "json":
        print(json.dumps(found, indent=2))
        return EXIT_OK
    for fam in found:
        print(f"{fam['spec']:<18} {fam['description']}")
        for variant, sets in fam["variants"].items() if args.family else ():
            flags = " ".join(f"--set {k}={json.dumps(v).replace(' ', '')}" for k, v in sets.items())
            print(f"  zoo:{variant:<20} {flags or '(the defaults)'}")
        if not args.family and fam["variants"]:
            print(f"  variants: {', '.join(fam['variants'])}")
    if not args.family:
        print(f"examples:          {', '.join('zoo:' + name for name in examples())}")
        print("\na variant names its family and variables: yamlnet train zoo:resnet50 = "
              "yamlnet train zoo:resnet --set depth=50")  # fmt: skip
    return EXIT_OK


def cmd_validate(args) -> int:
    from .compiler.errors import SpecError

    failed = 0
    report = []
    for path in args.specs:
        try:
            result = _compile(args, path)
            _check_run_config(args, result)
        except SpecError as err:
            failed += 1
            if args.format == "json":
                report += [d.as_dict() for d in err.diagnostics]
            else:
                _error(str(err))
            continue
        if args.format == "text":
            n = sum(1 for _ in result.spec.nodes)
            params = sum(result.graph.nodes[x].get("params", 0) for x in result.graph)
            print(f"ok {path}: {n} nodes, {params:,} parameters")
    if args.format == "json":
        print(json.dumps(report, indent=2))
    return EXIT_USER if failed else EXIT_OK


def _check_run_config(args, result) -> None:
    """The data:/train: sections too, when the spec has them (the runtime checks them),
    and tune:'s space, tried on the run."""
    data = result.source.main.data
    if isinstance(data, dict) and ("data" in data or "train" in data):
        from .runtime.config import load_run_config, split_overrides

        load_run_config(result.source.main, None, split_overrides(_overrides(args.set))[0])
    if isinstance(data, dict) and "tune" in data:
        from .runtime.space import load_tune

        load_tune(result.source, None, _overrides(args.set))


def cmd_expand(args) -> int:
    from .compiler.lockfile import lockfile_text

    print(lockfile_text(_compile(args, args.spec)), end="")
    return EXIT_OK


def cmd_summary(args) -> int:
    from .compiler.summary import format_summary, summary_rows
    from .runtime.export import check_symbols

    dims = _dims(args.dim)
    result = _compile(args, args.spec)
    check_symbols(result, dims, ())  # a --dim the inputs do not have is a typo, not ignored
    costs, note = None, ""
    if not args.no_costs:
        from .compiler.costs import missing_dims, node_costs

        missing = missing_dims(result, dims)
        if missing:
            note = f"(MACs and activations need sizes: --dim {missing[0]}=SIZE{' ...' * (len(missing) > 1)})"
        else:
            import torch

            with torch.device("meta"):  # weights and activations as shapes only: no memory
                result = _compile(args, args.spec, build=True)
            costs = node_costs(result, dims)
    sizes = {"N": 1, **dims} if costs is not None else None
    print(format_summary(result, summary_rows(result, costs), args.format, sizes, note), end="")
    return EXIT_OK


EXIT_DIFFERENT = 1  # diff, like diff(1): the specs differ (not a failure)


def cmd_diff(args) -> int:
    from .compiler.diff import diff_specs, format_diff

    _overrides(args.set_a, "--set-a")  # parsed first, so that a malformed item names its flag
    _overrides(args.set_b, "--set-b")
    a = _compile(_with_sets(args, args.set_a), args.a)
    args_b, fit = _with_sets(args, args.set_b), None
    if args.checkpoint:
        import torch

        with torch.device("meta"):  # B's state_dict as shapes only: no memory
            b = _compile(args_b, args.b, build=True)
        fit = _checkpoint_fit(args.checkpoint, b.module.state_dict())
    else:
        b = _compile(args_b, args.b)
    diff = diff_specs(a, b, (*args.set, *args.set_a), (*args.set, *args.set_b), fit)
    print(format_diff(diff, args.format), end="")
    return EXIT_OK if diff.equal else EXIT_DIFFERENT


def _with_sets(args, extra: list[str]) -> argparse.Namespace:
    """args with `extra` --set items after its own (for one side of a diff)."""
    return argparse.Namespace(**{**vars(args), "set": [*args.set, *extra]})


def _checkpoint_fit(source: str, model: dict):
    """Which tensors of the checkpoint `source` load into `model` (a state_dict)."""
    import contextlib

    import torch

    from .compiler.diff import checkpoint_fit
    from .runtime.evaluate import resolve_checkpoint

    with contextlib.redirect_stdout(sys.stderr):  # its warnings must not break --format json
        path, state = resolve_checkpoint(source)
    tensors = state.get("model")
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise UserError(f"{path} holds no state_dict of tensors under 'model'")
    shapes = lambda sd: {k: tuple(v.shape) for k, v in sd.items()}  # noqa: E731
    return checkpoint_fit(str(path), shapes(tensors), shapes(model))


MAX_DIM = 2**31 - 1  # a --dim past this overflows PyTorch's 32-bit sizes in places


def _dims(items: list[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, sep, size = item.partition("=")
        if not sep or not size.isdigit() or int(size) < 1:
            raise UserError(f"--dim expects SYMBOL=SIZE, got '{item}'")
        if len(size) > 12 or int(size) > MAX_DIM:
            raise UserError(f"--dim {name.strip()}: {size[:24]} is past {MAX_DIM:,}, the largest size a dim may have")
        dims[name.strip()] = int(size)
    return dims


GRAPH_FORMATS = ("svg", "png", "pdf", "dot", "mermaid")
NO_DOT = ("Graphviz's `dot` program is not installed (Debian/Ubuntu: apt install graphviz; macOS: "
          "brew install graphviz; conda install graphviz); --format dot or mermaid need nothing")  # fmt: skip


def cmd_graph(args) -> int:
    import shutil
    import subprocess

    from .compiler.draw import drawing, to_dot, to_mermaid

    fmt = args.format
    if fmt is None:
        ext = os.path.splitext(args.out or "")[1].lstrip(".").lower()
        fmt = {"gv": "dot", "mmd": "mermaid", "md": "mermaid"}.get(ext, ext) if ext else "dot"
        if fmt not in GRAPH_FORMATS:
            raise UserError(f"cannot tell the format from '{args.out}'; pass --format "
                            + "|".join(GRAPH_FORMATS))  # fmt: skip
    if args.depth is not None and args.depth < 0:
        raise UserError("--depth takes a number >= 0")
    result = _compile(args, args.spec)
    picture = drawing(result, args.depth)
    text = to_mermaid(picture) if fmt == "mermaid" else to_dot(picture)
    if fmt in ("dot", "mermaid"):
        if args.out:
            _write(args.out, text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
        return EXIT_OK
    dot = shutil.which("dot")
    if dot is None:
        raise UserError(NO_DOT)
    out = args.out or f"{result.spec.name}.{fmt}"
    done = subprocess.run([dot, f"-T{fmt}"], input=text.encode(), capture_output=True, timeout=300)
    if done.returncode != 0:
        raise UserError(f"dot failed: {done.stderr.decode(errors='replace').strip().splitlines()[0]}")
    _write(out, done.stdout)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_compile(args) -> int:
    import torch

    from .compiler.codegen import emit_python

    torch.manual_seed(args.seed)
    result = _compile(args, args.spec, build=True)
    module = result.module
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    print(f"compiled {args.spec}: {result.spec.name}, {len(result.spec.nodes)} nodes, {total:,} parameters"
          f"{f', {trainable:,} trainable' if trainable != total else ''}, hash {result.hash[:12]}")  # fmt: skip
    if args.emit_python:
        _write(args.emit_python, emit_python(result.graph, module))
        print(f"wrote {args.emit_python}")
    if args.out:
        _atomic_save(module.state_dict(), args.out)
        print(f"wrote {args.out}")
    return EXIT_OK


def _run_overrides(args) -> dict[str, Any]:
    """--set items plus the shortcut flags (--epochs 3 is --set train.epochs=3)."""
    out = _overrides(args.set)
    flags = {"device": "train.device", "precision": "train.precision", "epochs": "train.epochs",
             "max_steps": "train.max_steps", "seed": "train.seed", "compile": "train.compile"}  # fmt: skip
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    return out


def cmd_train(args) -> int:
    from pathlib import Path

    resume = Path(args.resume_from) if args.resume_from else args.resume
    if args.max_restarts < 0 or (args.max_restarts and args.nproc is None):
        raise UserError("--max-restarts takes a number >= 0, and needs --nproc")
    if args.nproc is not None:
        return _launch(args, resume)
    from .runtime.train import train

    result = train(Path(args.spec), config=args.config, out=args.out, resume=resume,
                   force=args.force, plugins=tuple(args.plugin), **_run_overrides(args))  # fmt: skip
    return result.exit_code


def _launch(args, resume) -> int:
    """--nproc N: check the run here, then start N workers with the same arguments and
    the run folder fixed (so restarted workers resume the same run)."""
    from pathlib import Path

    from .runtime.launch import check_not_launched, launch
    from .runtime.train import plan

    if args.nproc < 1:
        raise UserError("--nproc takes a number of processes >= 1")
    check_not_launched()
    out = plan(Path(args.spec), config=args.config, out=args.out, resume=resume,
               plugins=tuple(args.plugin), overrides=_run_overrides(args))  # fmt: skip
    return launch(_worker_args(args, out), args.nproc, args.max_restarts)


def _worker_args(args, out) -> list[str]:
    """The train command line of a worker: this one's, without --nproc/--max-restarts,
    with --out set (workers start in this directory: other paths stay as given)."""
    argv = [args.spec, "--out", str(out)]
    if args.config:
        argv += ["--config", args.config]
    if args.resume_from:
        argv += ["--resume-from", args.resume_from]
    elif args.resume:
        argv.append("--resume")
    argv += ["--force"] * args.force + ["--verbose"] * args.verbose
    for plugin in args.plugin:
        argv += ["--plugin", plugin]
    for item in args.set:
        argv += ["--set", item]
    for flag in ("device", "precision", "epochs", "max_steps", "seed"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.compile is not None:
        argv.append("--compile" if args.compile else "--no-compile")
    return argv


def cmd_tune(args) -> int:
    from pathlib import Path

    from .runtime.tune import import_optuna, tune

    try:
        import_optuna()  # the optional extra
    except ImportError as err:
        raise UserError(str(err)) from None

    for flag, value in (("--trials", args.trials), ("--timeout", args.timeout)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} takes a number > 0, got {value:g}")
    result = tune(Path(args.spec), config=args.config, out=args.out, trials=args.trials,
                  timeout=args.timeout, study=args.study, storage=args.storage,
                  plugins=tuple(args.plugin), **_overrides(args.set))  # fmt: skip
    return result.exit_code


def cmd_eval(args) -> int:
    from pathlib import Path

    from .runtime.evaluate import evaluate

    values = evaluate(Path(args.spec), args.checkpoint, split=args.split, config=args.config,
                      device=args.device, **_overrides(args.set))  # fmt: skip
    if args.format == "json":
        print(json.dumps(values, indent=2))
    else:
        for key, value in values.items():
            print(f"{key}: {value:.6g}")
    return EXIT_OK


def cmd_predict(args) -> int:
    import csv
    import io
    from pathlib import Path

    from .runtime.predict import predict

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    result = predict(Path(args.spec), args.checkpoint, args.input, batch_size=args.batch_size,
                     config=args.config, device=args.device, **_overrides(args.set))  # fmt: skip
    if args.out and args.out.endswith((".pt", ".npz")):
        _write_outputs(result.outputs, args.out)
        print(f"wrote {len(result.outputs)} predictions ({result.output_name}) to {args.out}")
        return EXIT_OK
    if result.kind == "masks":
        if not args.out:
            raise UserError("masks are written as PNG files: pass --out FILE.csv (they go to "
                            "FILE_masks/ beside it)")  # fmt: skip
        folder = _write_masks(result, args.out)
        print(f"wrote {len(result.samples)} masks to {folder}")
    rows = result.rows()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        _write(args.out, buf.getvalue())
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        sys.stdout.write(buf.getvalue())
    return EXIT_OK


def _write_masks(result, out: str) -> str:
    """Each sample's mask as a PNG of class ids (8-bit, 16-bit past 255 classes)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .runtime.predict import mask_file

    folder = Path(out).with_name(Path(out).stem + "_masks")
    wide = result.outputs.shape[1] > 256
    for sample, mask in zip(result.samples, result.masks(), strict=True):
        path = folder / mask_file(sample)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = mask.numpy().astype(np.uint16 if wide else np.uint8)
            Image.fromarray(pixels).save(path)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return str(folder)


def _write_outputs(outputs, path: str) -> None:
    if path.endswith(".pt"):
        _atomic_save(outputs, path)
    else:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, outputs=outputs.numpy())
        _write(path, buf.getvalue())


def cmd_generate(args) -> int:
    from pathlib import Path

    from .runtime.generate import generate

    result = generate(Path(args.spec), args.checkpoint, args.prompt,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, seed=args.seed, config=args.config, device=args.device,
                      **_overrides(args.set))  # fmt: skip
    sys.stdout.write(result.prompt + result.text + "\n")
    return EXIT_OK


def cmd_export(args) -> int:
    from pathlib import Path

    from .runtime.export import TS_DEPRECATION, ExportError, export, format_checks

    dims = _dims(args.dim)
    if args.format == "torchscript":
        print(TS_DEPRECATION)
    try:
        result = export(Path(args.spec), format=args.format, out=args.out, checkpoint=args.checkpoint,
                        verify=not args.no_verify, opset=args.opset, onnx_exporter=args.onnx_exporter,
                        trace=args.trace, atol=args.atol, rtol=args.rtol, dims=dims,
                        static=tuple(args.static), **_overrides(args.set))  # fmt: skip
    except ExportError as err:
        if args.verbose:
            raise
        _error(f"error: {err}")
        return EXIT_FAILURE
    print(f"wrote {result.path} ({args.format}, {result.seconds:.1f} s)")
    if result.checks:
        print(format_checks(result.checks))
        if not result.ok:
            print(f"error: outputs differ beyond atol {args.atol} / rtol {args.rtol}", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK


def cmd_import(args) -> int:
    from .compiler.importer import (
        ImportFailure,
        import_module,
        load_target,
        parse_input,
        snake_case,
    )

    if args.out and os.path.exists(args.out) and not args.force:
        raise UserError(f"{args.out} exists; pass --force to overwrite it")
    kwargs = _overrides(args.arg) if args.arg else {}
    try:
        inputs = [parse_input(text) for text in args.input]
    except ImportFailure as err:
        raise UserError(str(err)) from err
    dims = _dims(args.dim)
    attr = args.target.rpartition(":")[2].rpartition(".")[2]
    command = " ".join(["yamlnet", *(f"--plugin {p}" for p in args.plugin), "import", args.target,
                        *(f"--arg {a}" for a in args.arg),
                        *(f"--input {i.replace(' ', '')}" for i in args.input)])  # fmt: skip
    try:
        module = load_target(args.target, kwargs)
        result = import_module(module, inputs, name=args.name or snake_case(attr), dims=dims,
                               check=not args.no_check, header=f"Written by `{command}`.")  # fmt: skip
    except ImportFailure as err:
        raise UserError(str(err)) from err
    lines = result.text.count("\n")
    if result.max_abs_diff is None:
        checked = "not checked (--no-check)"
    else:
        at = ", ".join(f"{k}={v}" for k, v in result.sample.items())
        checked = (f"checked: loads {args.target}'s state_dict (strict) and gives its outputs "
                   f"(max abs diff {result.max_abs_diff:.3g}{' at ' + at if at else ''})")  # fmt: skip
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(result.text, encoding="utf-8")
        print(f"wrote {args.out}: {lines} lines, {result.nodes} nodes, {result.parameters:,} parameters; {checked}")
    else:
        sys.stdout.write(result.text)
        print(f"{lines} lines, {result.nodes} nodes, {result.parameters:,} parameters; {checked}", file=sys.stderr)
    return EXIT_OK


def _need_matplotlib(command: str) -> None:
    from .runtime.plot import need_matplotlib

    try:
        need_matplotlib(f"yamlnet {command}")
    except ImportError as err:
        raise UserError(str(err)) from None


def cmd_plot(args) -> int:
    _need_matplotlib("plot")
    from .runtime.plot import plot_runs

    metrics = None
    if args.metrics is not None:
        metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
        if not metrics:
            raise UserError("--metrics takes column names separated by commas: train/loss,val/accuracy")
    result = plot_runs(args.runs, args.out, metrics=metrics, x=args.x)
    runs = f"{len(result.runs)} run{'s' * (len(result.runs) > 1)}"
    print(f"wrote {result.out}: {runs}; {', '.join(result.metrics)} against {args.x}")
    return EXIT_OK


def cmd_lr_find(args) -> int:
    import shlex
    from pathlib import Path

    if args.out:
        _need_matplotlib("lr-find --out")
        from .runtime.plot import check_out

        check_out(args.out)  # before the sweep, not after it
    from .runtime.lr_find import lr_find, lr_text, save_plot, short_lr

    result = lr_find(Path(args.spec), config=args.config, min_lr=args.min_lr, max_lr=args.max_lr,
                     steps=args.steps, plugins=tuple(args.plugin), **_run_overrides(args))  # fmt: skip
    if args.out:
        save_plot(result, args.out, f"lr-find: {Path(args.spec).name}")
    if args.format == "json":
        lr = result.suggestion
        print(json.dumps({**result.as_dict(), "set": lr and f"train.optimizer.lr={short_lr(lr)}",
                          "plot": args.out}, indent=1))  # fmt: skip
        return EXIT_OK
    again = [args.spec, *(["--config", args.config] if args.config else [])]
    again += [a for item in args.set if not item.startswith("train.optimizer.lr=") for a in ("--set", item)]
    print(lr_text(result, shlex.join(again)))
    if args.out:
        print(f"wrote {args.out}")
    return EXIT_OK


def cmd_checkpoint(args) -> int:
    from pathlib import Path

    from .runtime.shards import consolidate_to

    try:
        read, wrote, step = consolidate_to(Path(args.source), Path(args.out) if args.out else None)
    except OSError as err:
        raise UserError(f"{err.filename or args.out or args.source}: {err.strerror or err}") from None
    print(f"wrote {wrote} (step {step}) from {read}")
    return EXIT_OK


def cmd_schema(args) -> int:
    from . import published_schema

    text = json.dumps(published_schema(), indent=1, sort_keys=False) + "\n"
    if args.out:
        _write(args.out, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _write(path: str, data: str | bytes) -> None:
    """Write through a temporary file in the same folder, then rename over `path` (the
    checkpoints' atomic write); a failed write leaves nothing behind."""
    from .runtime.checkpoint import atomic_write

    try:
        atomic_write(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def _atomic_save(obj, path: str) -> None:
    import io

    import torch

    buf = io.BytesIO()  # torch.save's own writer reports a full disk in C++ words
    torch.save(obj, buf)
    _write(path, buf.getvalue())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
