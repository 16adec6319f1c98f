"""The `distill` command line.

Every subcommand loads and checks its inputs first; bad input prints one line,
``error: <what is wrong>``, and exits 2 before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.placement import ClusterError
from distill.commands.deployment import add_export_command, cmd_export
from distill.commands.evaluate import add_eval_command, cmd_eval
from distill.commands.launch import JOB_COMMANDS, add_job_commands
from distill.commands.serve import add_serve_command, cmd_serve
from distill.data import DataError
from distill.errors import RunFailed
from distill.spec import SpecError
from students.deploy import DeployError

SET_HELP = "override a spec field, e.g. --set trainer.epochs=3 (repeatable; values parsed as YAML)"


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="job spec YAML (see configs/demo.yaml and README)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Distill an ensemble of teachers into a small student: Ray-served teachers, "
                    "Lightning + DeepSpeed students, packed low-bit export.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train a student against its teachers and write a report",
                         description="Run a distillation job: start (or join) Ray, serve the teachers as "
                                     "actors, train the student with Ray Train + Lightning + DeepSpeed, "
                                     "evaluate, and write report.json and TensorBoard events.")
    _add_spec_args(run)
    run.add_argument("--address", default=None,
                     help="Ray address to join ('auto' or ray://host:10001); default: the spec's "
                          "cluster.address, else an embedded Ray on this machine")
    run.add_argument("--resume", action="store_true",
                     help="continue from the run folder's last checkpoint (same optimizer and step)")
    add_job_commands(sub, _add_spec_args)
    add_eval_command(sub)
    add_serve_command(sub, _add_spec_args)
    add_export_command(sub)

    teach = sub.add_parser("teach", help="run the teachers once over the training set and store soft labels",
                           description="Offline teaching: serve the spec's teachers as Ray actors, run them "
                                       "over every training sample (teachers.views augmented views each, "
                                       "with their crop/flip parameters) and write the soft labels (and "
                                       "hints) as WebDataset shards keyed like the data, in "
                                       "teachers.offline_dir (default <data.shards>/soft-<name>). A run with "
                                       "teachers.mode: offline then trains from them with no teacher.")
    _add_spec_args(teach)
    teach.add_argument("--address", default=None, help="Ray address to join; default: an embedded Ray")
    teach.add_argument("--batch-size", type=int, default=256, help="images per teacher request (default 256)")

    teachers = sub.add_parser("teachers", help="teacher utilities",
                              description="Teacher utilities.")
    tsub = teachers.add_subparsers(dest="teachers_command", required=True, metavar="ACTION")
    train = tsub.add_parser("train", help="train the spec's teachers whose files are missing",
                            description="Train each teacher that has a train: recipe and whose source "
                                        "file does not exist yet (for the embedded demo).")
    _add_spec_args(train)
    train.add_argument("--force", action="store_true", help="retrain even if the file exists")

    data = sub.add_parser("data", help="dataset utilities", description="Dataset utilities.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pack = dsub.add_parser("pack", help="pack a dataset into WebDataset shards",
                           description="Pack SRC ('sklearn-digits', an image folder with one subfolder per "
                                       "class, or an .npz with images/labels) into shards at DST with a "
                                       "fixed validation split (the last N samples of each class).")
    pack.add_argument("src", help="'sklearn-digits', an image folder, or an .npz file")
    pack.add_argument("dst", type=Path, help="output folder for shards and meta.json")
    pack.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    pack.add_argument("--val-per-class", type=int, default=30,
                      help="validation samples per class, taken from the end of each class (default 30)")
    pack.add_argument("--mean", type=float, nargs="+", help="fixed per-channel normalization mean for meta.json "
                                                            "(default: the training split's own)")
    pack.add_argument("--std", type=float, nargs="+", help="fixed per-channel normalization std (with --mean)")
    pack.add_argument("--on-corrupt", choices=("fail", "skip"), default="fail",
                      help="an unreadable image: stop naming it (default), or leave it out and count it")
    zoo = sub.add_parser("students", help="list the student zoo with parameters, MACs and bytes per precision",
                         description="List every registered student architecture with its parameters, "
                                     "mult-adds (counted with torch's FlopCounterMode) and storage bytes at "
                                     "fp32, int8, 2-bit ternary and 1-bit binary.")
    zoo.add_argument("--variant", choices=("imagenet", "cifar"), default="imagenet",
                     help="imagenet (224x224 stem) or cifar (32x32, no early downsampling)")
    zoo.add_argument("--num-classes", type=int, default=1000, help="classifier size (default 1000)")
    zoo.add_argument("--json", action="store_true", help="print one JSON object per model instead of a table")
    return parser


def _cmd_students(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from students import zoo_table

    rows = zoo_table(args.variant, args.num_classes)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return 0
    table = Table(title=f"student zoo ({args.variant}, {args.num_classes} classes)")
    for col in ("model", "params", "MACs", "fp32", "int8", "2-bit", "1-bit"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r.name, f"{r.params / 1e6:.2f}M", f"{r.macs / 1e6:.1f}M",
                      *(f"{b / 2**20:.2f} MiB" for b in (r.bytes_fp32, r.bytes_int8, r.bytes_ternary,
                                                         r.bytes_binary)))
    Console(width=max(Console().width, 100)).print(table)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from distill.commands.runner import run_job
    from distill.spec import load_spec

    spec = load_spec(args.config, args.overrides)
    run_job(spec, address=args.address, resume=args.resume)
    return 0


def _cmd_teach(args: argparse.Namespace) -> int:
    from distill.commands.teach import teach
    from distill.spec import load_spec

    if args.batch_size < 1:
        raise SpecError("--batch-size must be positive")
    teach(load_spec(args.config, args.overrides), address=args.address, batch_images=args.batch_size)
    return 0


def _cmd_teachers(args: argparse.Namespace) -> int:
    from distill.commands.runner import prepare_data
    from distill.commands.teacher_training import train_teachers
    from distill.spec import load_spec

    spec = load_spec(args.config, args.overrides)
    root, meta = prepare_data(spec)
    train_teachers(spec, root, meta, force=args.force)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from distill.data import pack_source

    if args.shard_size < 1 or args.val_per_class < 1:
        raise DataError("--shard-size and --val-per-class must be positive")
    if (args.mean is None) != (args.std is None):
        raise DataError("--mean and --std go together")
    normalize = (args.mean, args.std) if args.mean is not None else None
    meta = pack_source(args.src, args.dst, shard_size=args.shard_size, val_per_class=args.val_per_class,
                       normalize=normalize, on_corrupt=args.on_corrupt)
    print(f"{args.dst}: {meta.count('train')} train / {meta.count('val')} val samples, "
          f"{meta.num_classes} classes, {meta.channels}x{meta.image_size}x{meta.image_size}")
    return 0


COMMANDS = {"run": _cmd_run, "teachers": _cmd_teachers, "data": _cmd_data, "students": _cmd_students,
            "eval": cmd_eval, "export": cmd_export, "teach": _cmd_teach, "serve": cmd_serve,
            **JOB_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, DataError, ClusterError, DeployError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; Ray was shut down (a run continues from its last checkpoint with --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
