"""`distill launch / status / stop / logs`: a run as a Ray Job on a cluster.

``launch`` checks the spec here first (a typo fails in a second, not after an
upload and a queue), then submits ``python -m distill run SPEC --address auto``
with the same ``--set`` overrides. The job's working folder is uploaded and is
its current directory on the cluster, so relative paths in the spec would
land in a temporary folder on the head node: data, teachers, output and
TensorBoard belong on shared storage, named by absolute paths (a warning says
which are relative). ``distill run`` then checks on every node that they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACKAGES = ("distill", "teachers", "students", "kernels", "cluster")
ADDRESS_HELP = ("Ray dashboard address, e.g. http://head:8265 (default: $RAY_API_SERVER_ADDRESS, "
                "$RAY_ADDRESS, else a local cluster)")


def project_root() -> Path | None:
    """The source checkout this `distill` runs from, if it is one (else the cluster must have it)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def relative_paths(spec) -> list[str]:
    """Spec fields holding relative paths that the cluster would resolve inside the job's working folder."""
    source = Path(spec.data.source)
    data = ("data.source", source) if (source / "meta.json").is_file() else ("data.shards", spec.data.shards)
    paths = {data[0]: data[1], "output.dir": spec.output.dir, "logging.tensorboard": spec.logging.tensorboard}
    paths.update({f"teachers.members.{i}.source": m.source for i, m in enumerate(spec.teachers.members)})
    return [f"{k} ({v})" for k, v in paths.items() if not Path(v).is_absolute()]


def add_job_commands(sub: argparse._SubParsersAction, add_spec_args) -> None:
    launch = sub.add_parser("launch", help="submit a run to a Ray cluster as a Ray Job",
                            description="Check the spec, upload the working folder (and this project's "
                                        "packages if they are not inside it) and run `distill run SPEC "
                                        "--address auto` on the cluster as a Ray Job. Prints the job id.")
    add_spec_args(launch)
    launch.add_argument("--address", default=None, help=ADDRESS_HELP)
    launch.add_argument("--working-dir", type=Path, default=None,
                        help="folder uploaded as the job's cwd; must contain CONFIG (default: this project)")
    launch.add_argument("--job-id", default=None, help="submission id to use (default: Ray makes one)")
    launch.add_argument("--resume", action="store_true", help="pass --resume to the run")
    launch.add_argument("--follow", action="store_true", help="print the job's logs until it ends")
    for name, what in (("status", "show a job's state"), ("stop", "stop a job"),
                       ("logs", "print a job's logs")):
        p = sub.add_parser(name, help=what,
                           description=f"{what[0].upper()}{what[1:]} (a Ray Job id from `distill launch`).")
        p.add_argument("job_id", metavar="JOB", nargs="?" if name == "status" else None,
                       help="job id printed by `distill launch`")
        p.add_argument("--address", default=None, help=ADDRESS_HELP)
        if name == "status":
            p.add_argument("--service", metavar="NAME", default=None,
                           help="show the teacher service NAME instead (replicas, queues, per-job rate and "
                                "wait); --address is then the Ray address, default auto")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep printing until the job ends")


def _cmd_launch(args: argparse.Namespace) -> int:
    from cluster import jobs
    from distill.spec import SpecError, load_spec

    spec = load_spec(args.config, args.overrides)
    root = project_root()
    workdir = (args.working_dir or root or Path.cwd()).resolve()
    config = args.config.resolve()
    if not config.is_relative_to(workdir):
        raise SpecError(f"{args.config}: the job spec must be inside the uploaded working dir {workdir}; "
                        "move it there or pass --working-dir")
    packages = [root / p for p in PACKAGES] if root and not root.is_relative_to(workdir) else []
    entry = ["python", "-m", "distill", "run", str(config.relative_to(workdir)), "--address", "auto"]
    for item in args.overrides:
        entry += ["--set", item]
    if args.resume:
        entry.append("--resume")
    for rel in relative_paths(spec):
        print(f"warning: {rel} is relative: on the cluster it resolves inside the job's temporary "
              "working dir; use an absolute path on shared storage", file=sys.stderr)
    job_id = jobs.submit(args.address, entry, jobs.runtime_env(workdir, packages),
                         submission_id=args.job_id, metadata={"distill_job": spec.name})
    where = f" --address {args.address}" if args.address else ""
    print(job_id)
    print(f"follow:  distill logs {job_id}{where} --follow\nstatus:  distill status {job_id}{where}\n"
          f"stop:    distill stop {job_id}{where}\ntensorboard --logdir {spec.logging.tensorboard} "
          f"(on the shared storage)")
    if args.follow:
        jobs.logs(args.address, job_id, follow=True)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from cluster import jobs
    from distill.spec import SpecError

    if args.service:
        from distill.commands.serve import service_status

        return service_status(args.service, args.address)
    if not args.job_id:
        raise SpecError("distill status: give a JOB id, or --service NAME")

    info = jobs.info(args.address, args.job_id)
    print(f"{args.job_id}: {info.status.value}")
    if info.message:
        print(info.message.strip().splitlines()[0])
    print(f"entrypoint: {info.entrypoint}")
    if info.start_time:
        end = info.end_time or None
        took = f"{((end or 0) - info.start_time) / 1000:.0f} s" if end else "running"
        print(f"time: {took}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from cluster import jobs

    stopped = jobs.stop(args.address, args.job_id)
    print(f"{args.job_id}: " + ("stop requested" if stopped else "already ended"))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from cluster import jobs

    jobs.logs(args.address, args.job_id, follow=args.follow)
    return 0


JOB_COMMANDS = {"launch": _cmd_launch, "status": _cmd_status, "stop": _cmd_stop, "logs": _cmd_logs}

__all__ = ["JOB_COMMANDS", "add_job_commands", "project_root", "relative_paths"]
