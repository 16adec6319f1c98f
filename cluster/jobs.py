"""Submitting a run to a Ray cluster as a Ray Job, and following it.

A Ray Job runs its entrypoint (here ``python -m distill run ... --address
auto``) as the driver on the head node, so the run outlives the laptop that
submitted it and its logs stay on the cluster. The code travels with the job:
the working folder (which must hold the job spec) is uploaded, and when the
project is not inside it the project's packages go as ``py_modules``. The
cluster's Python still needs the dependencies (torch, lightning, ray, ...)
installed: bake them into the image. Talks to the dashboard's HTTP address
(``http://head:8265``); with ``RAY_AUTH_MODE=token`` Ray's client sends the
token from ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` by itself.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cluster.placement import ClusterError

# Never worth uploading; .gitignore'd paths are skipped by Ray as well.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]


def client(address: str | None) -> Any:
    """A ``JobSubmissionClient``; ``None`` uses ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS``."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"--address {address or '(from RAY_ADDRESS)'}: cannot reach the Ray dashboard: "
                           f"{first}") from None


def runtime_env(working_dir: Path, packages: Sequence[Path] = (),
                env_vars: dict[str, str] | None = None) -> dict:
    """Upload ``working_dir`` (the job's cwd) and, as importable modules, ``packages``."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(EXCLUDES)}
    if packages:
        env["py_modules"] = [str(p) for p in packages]
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def submit(address: str | None, entrypoint: Sequence[str], env: dict, *,
           submission_id: str | None = None, metadata: dict[str, str] | None = None) -> str:
    """Submit ``entrypoint`` (an argv list, shell-quoted here) and return the job id."""
    return client(address).submit_job(entrypoint=shlex.join(entrypoint), runtime_env=env,
                                      submission_id=submission_id, metadata=metadata)


def info(address: str | None, job_id: str) -> Any:
    """The job's ``JobDetails`` (status, message, entrypoint, times)."""
    jobs = client(address)
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"job {job_id}: {str(exc).strip().splitlines()[0]}") from None


def stop(address: str | None, job_id: str) -> bool:
    """Ask the job to stop (SIGTERM to its driver, then SIGKILL); False if it had already ended."""
    jobs = client(address)
    try:
        return jobs.stop_job(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"job {job_id}: {str(exc).strip().splitlines()[0]}") from None


def logs(address: str | None, job_id: str, *, follow: bool = False, out: TextIO = sys.stdout) -> None:
    """Print the job's driver log; ``follow`` keeps printing until the job ends (Ctrl-C just detaches)."""
    jobs = client(address)
    if not follow:
        out.write(jobs.get_job_logs(job_id))
        return

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        out.write(f"\n(detached; the job goes on: distill stop {job_id} ends it)\n")


__all__ = ["EXCLUDES", "client", "info", "logs", "runtime_env", "stop", "submit"]
