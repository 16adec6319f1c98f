"""The teacher service: one Ray actor per teacher replica.

Each actor loads its teacher once, then answers ``infer`` calls for whole
batches under ``torch.inference_mode()``. Results go back as numpy arrays
through the object store (zero-copy for the reader): fp16 or fp32 logits, or
top-k values plus indices, and fp16 hint features. Actors are created with
``max_restarts`` so Ray brings a crashed replica back; the client retries the
requests it lost (see ``teachers.client``). A shared service's replicas wrap the same
``TeacherWorker`` in ``teachers.batching.SharedTeacher`` (fair queues per job, batches across jobs).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TeacherConfig:
    """What an actor needs to load and run one teacher (a plain, picklable record)."""

    name: str
    source: str
    format: str = "auto"
    arch: str | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)
    output: str = "fp16"  # fp16 | fp32 | topk
    topk: int = 0
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    threads: int = 1


def encode_logits(logits: torch.Tensor, output: str, topk: int) -> dict[str, np.ndarray]:
    """Compress logits for the wire: fp16, fp32, or top-k (values fp16, indices int16/int32)."""
    if output == "topk":
        values, indices = logits.topk(min(topk, logits.shape[1]), dim=1)
        index_dtype = np.int16 if logits.shape[1] < 2**15 else np.int32
        return {"topk_values": values.to(torch.float16).numpy(),
                "topk_indices": indices.numpy().astype(index_dtype), "num_classes": np.array(logits.shape[1])}
    dtype = torch.float16 if output == "fp16" else torch.float32
    return {"logits": logits.to(dtype).numpy()}


def decode_logits(payload: dict[str, np.ndarray], fill: float = -1e4) -> torch.Tensor:
    """Inverse of ``encode_logits`` as fp32; classes outside the top-k get ``fill`` (~zero probability)."""
    if "logits" in payload:
        return torch.from_numpy(np.asarray(payload["logits"], dtype=np.float32))
    values = torch.from_numpy(payload["topk_values"].astype(np.float32))
    indices = torch.from_numpy(payload["topk_indices"].astype(np.int64))
    out = torch.full((values.shape[0], int(payload["num_classes"])), fill)
    return out.scatter_(1, indices, values)


class TeacherWorker:
    """Body of a teacher actor (also usable in-process, e.g. for the throughput baseline)."""

    def __init__(self, config: TeacherConfig) -> None:
        from .hints import run_teacher
        from .load import load_teacher

        torch.set_num_threads(max(1, config.threads))
        self.config = config
        self._run = run_teacher
        self.model = load_teacher(config.source, config.format, arch=config.arch,
                                  num_classes=config.num_classes, arch_kwargs=config.arch_options,
                                  input_shape=config.input_shape)
        # Batches arrive as read-only object-store views (zero-copy); teachers only read them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.served = 0
        self.busy_s = 0.0

    def infer(self, x: np.ndarray) -> dict[str, Any]:
        """Logits (encoded per ``output``) and fp16 hints, plus when and how long it ran (for the client's
        health and throughput counters)."""
        started_at = time.time()
        start = time.perf_counter()
        logits, hints = self._run(self.model, torch.from_numpy(np.asarray(x)), self.config.hints)
        out: dict[str, Any] = encode_logits(logits.float(), self.config.output, self.config.topk)
        out["hints"] = {path: h.to(torch.float16).numpy() for path, h in hints.items()}
        elapsed = time.perf_counter() - start
        self.served += len(x)
        self.busy_s += elapsed
        out["latency_s"] = elapsed
        out["started_at"] = started_at
        out["pid"] = os.getpid()
        return out

    def stats(self) -> dict[str, Any]:
        return {"name": self.config.name, "served": self.served, "busy_s": self.busy_s, "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()


def start_replicas(config: TeacherConfig, replicas: int, *, num_cpus: float, num_gpus: float = 0.0,
                   resources: dict[str, float] | None = None, max_restarts: int = 3,
                   name_prefix: str | None = None, scheduling_strategy: Any = None) -> list[Any]:
    """Start ``replicas`` actors for one teacher; returns their handles once all have loaded.

    ``scheduling_strategy`` places them, e.g. in the teacher's placement group (``cluster.placement``).
    """
    import ray

    actor_cls = ray.remote(TeacherWorker)
    handles = [
        actor_cls.options(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None,
                          max_restarts=max_restarts, max_task_retries=0,  # the client re-sends
                          name=f"{name_prefix}teacher-{config.name}-{i}" if name_prefix else None,
                          scheduling_strategy=scheduling_strategy).remote(config)
        for i in range(replicas)
    ]
    ray.get([h.pid.remote() for h in handles])  # surface load errors now, not mid-training
    return handles


def stop_replicas(handles: list[Any]) -> None:
    """End actors for good (no restart)."""
    import ray

    for h in handles:
        ray.kill(h, no_restart=True)
