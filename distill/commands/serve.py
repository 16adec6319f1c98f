"""`distill serve`: a job spec's teachers as a named, shared, elastic service.

On a cluster (``--address``) the service is detached: the command places and
loads the first replicas, prints how to attach, and returns; the service lives
until ``distill serve --stop NAME``. Without an address there is no cluster to
outlive the command, so it starts an embedded Ray head and stays in the
foreground, printing the service's scaling decisions, until Ctrl-C, SIGTERM or
``--stop`` from another shell; jobs on this machine reach it with
``--address auto`` (written for them as Ray's current cluster) or the printed
address. A job attaches with ``teachers.service: NAME``: it starts no teacher
of its own, and everything else (hints, the online pipeline, `distill teach`)
runs as with its own replicas.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

from rich.console import Console

from cluster import ray_env
from cluster.placement import ClusterError, autoscaling
from distill.spec import JobSpec, SpecError, load_spec


def scaling_config(spec: JobSpec) -> Any:
    from teachers.scaling import ScalingConfig

    s = spec.teachers.serving
    most = max(m.replicas for m in spec.teachers.members)
    return ScalingConfig(min_replicas=s.min_replicas, max_replicas=max(s.max_replicas or most, s.min_replicas),
                         wait_threshold_ms=s.wait_threshold_ms, up_after_s=s.up_after_s, idle_after_s=s.idle_after_s,
                         idle_busy=s.idle_busy, interval_s=s.interval_s, max_batch=s.max_batch,
                         max_wait_ms=s.max_wait_ms, placement_wait_s=s.placement_wait_s)


def service_name(spec: JobSpec, name: str | None) -> str:
    return name or spec.teachers.service or spec.name


def add_serve_command(sub: argparse._SubParsersAction, add_spec_args) -> None:
    p = sub.add_parser("serve", help="serve a spec's teachers as a shared, elastic service for many jobs",
                       description="Start the spec's teachers as a named teacher service that jobs attach to "
                                   "with teachers.service: NAME. With --address it is detached on that cluster "
                                   "and lives until --stop; without, it runs an embedded Ray in the foreground "
                                   "until Ctrl-C or --stop. Replicas scale between teachers.serving.min_replicas "
                                   "and max_replicas on the attached students' wait per step.")
    add_spec_args(p)
    p.set_defaults(config=None)
    p.add_argument("--name", default=None, help="service name (default: teachers.service, else the spec's name)")
    p.add_argument("--address", default=None, help="Ray cluster to serve on ('auto', host:port); default: "
                                                   "an embedded Ray in the foreground")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="logical CPUs of the embedded Ray, for the replicas and the jobs that attach "
                        "(default: this machine's, or what max_replicas need if more)")
    p.add_argument("--stop", metavar="NAME", default=None, help="stop the service NAME (no CONFIG needed)")
    # CONFIG is optional here (--stop needs none): relax the positional the shared helper added.
    for action in p._actions:
        if action.dest == "config":
            action.nargs = "?"


def cmd_serve(args: argparse.Namespace) -> int:
    if args.stop:
        return _stop(args.stop, args.address or "auto")
    if args.config is None:
        raise SpecError("distill serve: give a CONFIG to serve, or --stop NAME")
    spec = load_spec(args.config, args.overrides)
    return serve(spec, service_name(spec, args.name), args.address, num_cpus=args.num_cpus)


def serve(spec: JobSpec, name: str, address: str | None, *, num_cpus: float | None = None,
          console: Console | None = None) -> int:
    from distill.driver.checks import check_teachers
    from distill.driver.feature_shapes import teacher_hint_paths
    from distill.driver.stages import prepare_data, teacher_config
    from teachers.controller import ReplicaResources, find_service, start_service

    console = console or Console()
    members = spec.teachers.members
    if not members:
        raise SpecError("teachers.members: `distill serve` needs at least one teacher")
    root, meta = prepare_data(spec)
    check_teachers(spec, meta)
    hints = teacher_hint_paths(spec)
    configs = [teacher_config(spec, meta, i, hints[m.name]) for i, m in enumerate(members)]
    scaling = scaling_config(spec)
    initial = [min(max(m.replicas, scaling.min_replicas), scaling.max_replicas) for m in members]
    resources = [ReplicaResources(m.resources.num_cpus, m.resources.num_gpus, dict(m.resources.custom),
                                  dict(m.resources.labels)) for m in members]
    embedded = address is None
    extras: dict[str, Any] = {}
    if embedded:
        need = sum(r.num_cpus for r in resources) * scaling.max_replicas
        custom: dict[str, float] = {}
        for r in resources:
            for k, v in r.custom.items():
                custom[k] = custom.get(k, 0.0) + v * scaling.max_replicas
        extras = {"num_cpus": max(need, num_cpus or 0.0), "resources": custom or None,
                  "labels": {k: v for r in resources for k, v in r.labels.items()} or None}
    started = ray_env.connect(address, namespace=spec.cluster.namespace, **extras)
    try:
        import ray

        if find_service(name, spec.cluster.namespace) is not None:
            raise ClusterError(f"--name: a teacher service {name!r} already runs in namespace "
                               f"{spec.cluster.namespace!r}; stop it first (distill serve --stop {name})")
        console.print(f"starting teacher service {name!r}: " + ", ".join(
            f"{m.name} x{n}" for m, n in zip(members, initial, strict=True))
            + f" (replicas {scaling.min_replicas}..{scaling.max_replicas} per teacher)")
        tb_dir = spec.logging.tensorboard.resolve() / f"service-{name}"
        try:
            controller = start_service(name, configs, resources, initial, scaling, namespace=spec.cluster.namespace,
                                       tensorboard_dir=str(tb_dir), autoscaler=autoscaling())
        except ray.exceptions.RayActorError as exc:
            raise ClusterError(f"teacher service {name!r} did not start: {_cause(exc)}") from None
        gcs = ray.get_runtime_context().gcs_address
        console.print(f"serving {name!r} (namespace {spec.cluster.namespace}); tensorboard --logdir {tb_dir}")
        print(f"address: {gcs}", flush=True)  # plain: scripts read this line
        where = "auto" if embedded else gcs  # `auto` also picks up the token of an embedded head's auth
        console.print(f"attach: distill run JOB.yaml --set teachers.service={name} --address {where}")
        console.print(f"status: distill status --service {name} --address {where}")
        if not embedded:
            console.print(f"stop:   distill serve --stop {name} --address {gcs}")
            return 0
        _write_address(gcs)
        console.print(f"foreground (embedded Ray): Ctrl-C or `distill serve --stop {name}` ends it")
        _follow(controller, console)
        return 0
    finally:
        if started and embedded:
            ray_env.shutdown()


def _cause(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    teacher = [ln for ln in lines if "teachers [" in ln or "Error:" in ln]
    return (teacher or lines or ["unknown error"])[-1]


def _write_address(gcs: str) -> None:
    """Make ``--address auto`` find this embedded head, as ``ray start --head`` would."""
    try:
        from ray._private.utils import write_ray_address

        write_ray_address(gcs)
    except Exception:  # noqa: BLE001 - private helper gone in some Ray: the printed address still works
        pass


def _follow(controller: Any, console: Console) -> None:
    """Print decisions as they come; stop the service on Ctrl-C/SIGTERM; return once it is stopped."""
    import ray

    from teachers.controller import stop_service

    def terminate(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    seen = 0
    try:
        while True:
            try:
                events = ray.get(controller.events.remote(seen), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                console.print("teacher service stopped")
                return
            for e in events:
                console.print(f"[{e['uptime_s']:7.1f} s] {e['teacher']}: {e['action']}: {e['reason']}")
            seen += len(events)
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping the teacher service")
        stop_service(controller)


def _connect_service(name: str, address: str, namespace: str | None) -> Any:
    from teachers.controller import find_service

    try:
        ray_env.connect(address, namespace=namespace or "distill")
    except ConnectionError as exc:
        raise ClusterError(f"--address {address}: no Ray cluster there ({exc})") from None
    controller = find_service(name, namespace or "distill")
    if controller is None:
        raise ClusterError(f"no teacher service {name!r} in namespace {namespace or 'distill'!r} on {address}")
    return controller


def _stop(name: str, address: str, namespace: str | None = None) -> int:
    from teachers.controller import stop_service

    stop_service(_connect_service(name, address, namespace))
    print(f"teacher service {name!r} stopped")
    return 0


def service_status(name: str, address: str | None, namespace: str | None = None) -> int:
    """`distill status --service NAME`: replicas per teacher, queue depth, per-job rate and wait."""
    import ray
    from rich.table import Table

    status = ray.get(_connect_service(name, address or "auto", namespace).status.remote())
    console = Console(width=max(Console().width, 110))
    s = status["scaling"]
    console.print(f"teacher service {name!r}: up {status['uptime_s']:.0f} s, replicas {s['min_replicas']}.."
                  f"{s['max_replicas']} per teacher, wait threshold {s['wait_threshold_ms']:g} ms/step, "
                  f"batches up to {s['max_batch']} samples / {s['max_wait_ms']:g} ms")
    table = Table(title="teachers")
    for col in ("teacher", "serving", "starting", "draining", "queued", "busy"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for t in status["teachers"]:
        table.add_row(t["name"], str(t["serving"]), str(t["loading"] + t["placing"]), str(t["draining"]),
                      str(t["queued"]), f"{t['busy']:.2f}")
    console.print(table)
    jobs = Table(title="jobs (last 5 s)")
    for col in ("job", "requests/s", "samples/s", "wait ms/step", "last seen"):
        jobs.add_column(col, justify="left" if col == "job" else "right")
    for j in status["jobs"]:
        wait = "-" if j["wait_ms_per_step"] is None else f"{j['wait_ms_per_step']:.1f}"
        jobs.add_row(j["job"], f"{j['requests_per_s']:.1f}", f"{j['samples_per_s']:.0f}", wait,
                     f"{j['last_seen_s']:.0f} s ago")
    console.print(jobs)
    for d in status["decisions"]:
        console.print(f"[{d['uptime_s']:7.1f} s] {d['teacher']}: {d['action']}: {d['reason']}")
    return 0


__all__ = ["add_serve_command", "cmd_serve", "scaling_config", "serve", "service_status"]
