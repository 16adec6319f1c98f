"""The job spec: one YAML file, validated by pydantic before anything starts.

Every section forbids unknown keys, so a typo fails at load time with the
field's dotted path instead of being silently ignored mid-run. ``load_spec``
applies ``--set a.b=value`` overrides to the raw YAML first, so an override is
validated exactly like the file. Checks that need the filesystem or the models
(teacher files exist, class counts agree) live in ``distill.driver.checks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A bad job spec; the message is one line naming the field or file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentSpec(_Section):
    crop_padding: int = Field(0, ge=0, description="random crop after reflect-padding by this many pixels")
    hflip: bool = Field(False, description="random horizontal flip (off for digits: they are not symmetric)")
    mixup: float = Field(0.0, ge=0.0, description="mixup Beta(a, a) parameter; 0 disables")
    cutmix: float = Field(0.0, ge=0.0, description="cutmix Beta(a, a) parameter; 0 disables")


class NormalizeSpec(_Section):
    """Fixed input normalization, for teachers trained with published constants (CIFAR-10's)."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"needs one mean and one positive std per channel, got {self.mean} / {self.std}")
        return self


class DataSpec(_Section):
    source: str = Field("sklearn-digits", description="'sklearn-digits', an image folder, or a shard folder")
    shards: Path = Field(Path("data_cache/digits"), description="folder of WebDataset shards (made on first use)")
    shard_size: int = Field(200, ge=1, description="samples per shard when packing")
    val_per_class: int = Field(30, ge=1, description="fixed validation split: last N files of each class")
    shuffle_buffer: int = Field(500, ge=0)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    on_corrupt: Literal["skip", "fail"] = "skip"
    normalize: NormalizeSpec | None = Field(None, description="per-channel mean/std written to meta.json at "
                                                              "packing; default: the training split's own")
    augment: AugmentSpec = AugmentSpec()


class ResourcesSpec(_Section):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict, description="custom Ray resources, e.g. {teacher_node: 1}")
    labels: dict[str, str] = Field(default_factory=dict,
                                   description="Ray node label selector, e.g. {ray.io/accelerator-type: L4}")


class TeacherTrainSpec(_Section):
    """How `distill teachers train` makes this teacher when its file does not exist yet."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class TeacherSpec(_Section):
    name: str
    source: Path
    format: Literal["auto", "state_dict", "torchscript", "export"] = "auto"
    arch: str | None = Field(None, description="project arch name or module:callable, for state dicts")
    arch_options: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0, description="weight in the ensemble combination")
    temperature: float | None = Field(None, gt=0, description="overrides the KD temperature for this teacher")
    hints: list[str] = Field(default_factory=list, description="module paths whose outputs are returned")
    replicas: int = Field(1, ge=1)
    resources: ResourcesSpec = ResourcesSpec()
    train: TeacherTrainSpec | None = None


class ServingSpec(_Section):
    """How `distill serve` runs the teachers as a shared, elastic service (see teachers.scaling)."""

    min_replicas: int = Field(1, ge=1, description="fewest replicas per teacher")
    max_replicas: int | None = Field(None, ge=1, description="most replicas per teacher; default: each "
                                                             "member's replicas (no growth)")
    wait_threshold_ms: float = Field(20.0, ge=0, description="add a replica when a job's student waits "
                                                             "longer than this per step...")
    up_after_s: float = Field(3.0, ge=0, description="...for this long")
    idle_after_s: float = Field(30.0, ge=0, description="remove one after its teacher is idle this long")
    idle_busy: float = Field(0.05, ge=0, le=1, description="below this busy fraction a teacher is idle")
    interval_s: float = Field(1.0, gt=0, description="how often the service looks at its load")
    max_batch: int = Field(256, ge=0, description="samples per forward when requests (of any job) arrive "
                                                  "together; 0: one request per forward")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a replica waits for more requests to batch")
    placement_wait_s: float = Field(30.0, gt=0, description="how long a new replica may wait to be placed")

    @model_validator(mode="after")
    def _bounds(self) -> ServingSpec:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} < min_replicas {self.min_replicas}")
        return self


class TeachersSpec(_Section):
    mode: Literal["online", "inprocess", "offline", "none"] = Field(
        "online", description="online: Ray actors; inprocess: in each training worker, synchronously; "
                              "offline: stored by `distill teach`; none: hard labels only")
    combine: Literal["mean_probs", "mean_logits"] = "mean_probs"
    window: int = Field(4, ge=1, description="batches kept in flight to the teacher pool")
    output: Literal["fp16", "fp32", "topk"] = "fp16"
    topk: int = Field(0, ge=0, description="k for output: topk")
    offline_dir: Path | None = Field(None, description="soft labels written by `distill teach` and read "
                                                       "by mode: offline; default <data.shards>/soft-<name>")
    views: int = Field(1, ge=1, description="augmented views per sample that `distill teach` stores")
    members: list[TeacherSpec] = Field(default_factory=list)
    service: str | None = Field(None, description="attach to this running teacher service (`distill serve`) "
                                                  "instead of starting replicas; joins --address, default auto")
    serving: ServingSpec = ServingSpec()

    @model_validator(mode="before")
    @classmethod
    def _list_shorthand(cls, value: Any) -> Any:
        # `teachers: [ {...}, {...} ]` is shorthand for `teachers: {members: [...]}`.
        return {"members": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> TeachersSpec:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        if self.output == "topk" and self.topk < 1:
            raise ValueError("output: topk needs topk >= 1")
        return self


class QuantSpec(_Section):
    scheme: str
    options: dict[str, Any] = Field(default_factory=dict)
    simulate_export: bool = Field(False, description="train with the packed kernels' int8 activation rounding "
                                                     "and evaluate in the export's arithmetic (BN folded, exact "
                                                     "integer sums; students.simulate_export), so the packed "
                                                     "export predicts what the trained model does")


class StudentSpec(_Section):
    arch: str = "mobilenet_v1"
    variant: Literal["cifar", "imagenet"] = "cifar"
    num_classes: int | None = Field(None, ge=2, description="defaults to the dataset's class count")
    options: dict[str, Any] = Field(default_factory=dict)
    quantization: QuantSpec | None = None


class LossTermSpec(BaseModel):
    """One weighted term; keys besides type/weight/name go to the term's constructor."""

    model_config = ConfigDict(extra="allow")
    type: str
    weight: float = Field(1.0, ge=0)
    name: str | None = None

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def label(self) -> str:
        return self.name or self.type


class LossSpec(_Section):
    terms: list[LossTermSpec] = Field(default_factory=lambda: [LossTermSpec(type="ce")])

    @field_validator("terms")
    @classmethod
    def _unique(cls, terms: list[LossTermSpec]) -> list[LossTermSpec]:
        labels = [t.label() for t in terms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"loss term names must be unique (set name:), got {labels}")
        if not terms:
            raise ValueError("at least one loss term is needed")
        return terms


class TrainerSpec(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="per training worker")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    precision: Literal["32", "bf16", "16"] = "32"
    deepspeed_stage: int = Field(2, ge=0, le=3)
    devices: int = Field(1, ge=1, description="devices per worker")
    grad_clip: float | None = Field(None, gt=0)
    deterministic: bool = False
    steps_per_epoch: int | None = Field(None, ge=1, description="default: train samples / global batch")
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="a non-finite loss term or gradient: stop "
                                                  "with one line, or skip the step (counted in TensorBoard)")


class ClusterSpec(_Section):
    address: str | None = Field(None, description="None: embedded Ray; 'auto' or ray://host:10001 to join")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    namespace: str = "distill"
    worker_resources: dict[str, float] = Field(default_factory=dict,
                                               description="custom Ray resources per student worker")
    worker_labels: dict[str, str] = Field(default_factory=dict,
                                          description="Ray node label selector for student workers")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement group strategy for the student workers")
    teacher_placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement group strategy for the teacher replicas (SPREAD survives a node loss)")
    placement_timeout_s: float | None = Field(
        600.0, gt=0, description="how long to wait for busy resources; None waits forever")
    max_failures: int = Field(0, ge=-1, description="Ray Train worker-group restarts from the last "
                                                    "checkpoint (-1: unlimited)")


class LoggingSpec(_Section):
    tensorboard: Path = Path("runs/tensorboard")
    log_every_n_steps: int = Field(5, ge=1)


class ExportSpec(_Section):
    """One file `distill run` writes at the end (distill.commands.deployment); a bare string is ``{to: <it>}``."""

    to: Literal["onnx", "executorch", "packed"]
    int8: bool = Field(False, description="static int8 (onnx: QDQ; executorch: PT2E/XNNPACK), float students only")
    kernels: bool = Field(False, description="executorch, ternary/binary students: the packed layers as the "
                                             "project's custom kernels (else the portable int8-weight form)")
    file: Path | None = Field(None, description="default <output.dir>/export/student[-int8|-lowbit].onnx|.pte|.pt")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"to": value} if isinstance(value, str) else value


class OutputSpec(_Section):
    dir: Path = Field(Path("runs/job"), description="run folder: config, checkpoints, report.json")
    export: list[ExportSpec] = Field(default_factory=list, description="runtime files to write and validate "
                                                                       "at the end, e.g. [onnx, executorch]")
    calibration_batches: int = Field(8, ge=1, description="training batches that calibrate an int8 export")


class JobSpec(_Section):
    name: str = "job"
    seed: int = 0
    data: DataSpec = DataSpec()
    teachers: TeachersSpec = TeachersSpec()
    student: StudentSpec = StudentSpec()
    loss: LossSpec = LossSpec()
    trainer: TrainerSpec = TrainerSpec()
    cluster: ClusterSpec = ClusterSpec()
    logging: LoggingSpec = LoggingSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _teachers_for_terms(self) -> JobSpec:
        from distill.losses import TERM_TYPES

        names = {m.name for m in self.teachers.members}
        for i, term in enumerate(self.loss.terms):
            if term.type not in TERM_TYPES:
                raise ValueError(f"loss.terms.{i}.type: unknown term {term.type!r}; known: {sorted(TERM_TYPES)}")
            needs = TERM_TYPES[term.type].needs_teacher
            if needs and (self.teachers.mode == "none" or not self.teachers.members):
                raise ValueError(f"loss.terms.{i}: term {term.type!r} needs teachers, but none are configured")
            teacher = term.options().get("teacher")
            if teacher is not None and teacher not in names:
                raise ValueError(f"loss.terms.{i}.teacher: no teacher named {teacher!r}")
        return self

    @model_validator(mode="after")
    def _simulate_export_needs_whole_fp32_weights(self) -> JobSpec:
        """The exact eval of simulate_export (students.simulate) rebuilds the export's layers from
        each process's own fp32 weights: ZeRO-3 keeps them partitioned, bf16 rounds them."""
        q, t = self.student.quantization, self.trainer
        if q is not None and q.simulate_export:
            if t.deepspeed_stage == 3:
                raise ValueError("student.quantization.simulate_export needs whole weights in every process; "
                                 "trainer.deepspeed_stage 3 partitions them (use 1 or 2)")
            if t.precision != "32":
                raise ValueError(f"student.quantization.simulate_export evaluates in the export's fp32 "
                                 f"arithmetic; trainer.precision is {t.precision!r} (use '32')")
        return self


def _set_path(doc: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = doc
    for j, key in enumerate(keys[:-1]):
        nxt = keys[j + 1]
        if isinstance(node, list):
            node = node[int(key)]
            continue
        if key not in node or node[key] is None:
            node[key] = [] if nxt.isdigit() else {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (so 3, true, [1,2] work)."""
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        try:
            _set_path(doc, key.strip(), yaml.safe_load(raw))
        except (IndexError, ValueError, TypeError, KeyError) as exc:
            raise SpecError(f"--set {key}: cannot set this path ({exc})") from None
    return doc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "spec"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" (got {err['input']!r})" if err["type"] not in ("missing", "value_error") and not isinstance(
        err.get("input"), dict | list) else ""
    more = f" [+{exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
    return f"{where}: {msg}{extra}{more}"


def parse_spec(doc: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(_first_error(exc)) from None


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_spec_doc(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The raw YAML mapping, with ``extends: other.yaml`` (relative to this file) merged beneath it.

    Recipes that differ in one section (the loss, the student) share the rest through a base
    file instead of repeating it."""
    if not path.is_file():
        raise SpecError(f"{path}: config file not found")
    if path.resolve() in _seen:
        raise SpecError(f"{path}: 'extends' loops back to itself")
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} is not valid YAML") from None
    if doc is None or doc == {}:
        raise SpecError(f"{path}: describes no job (the file is empty, only comments, or {{}})")
    if not isinstance(doc, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean"}.get(type(doc), "a number")
        raise SpecError(f"{path}: a job spec must be a YAML mapping of sections (name:, data:, ...), got {kind}")
    parent = doc.pop("extends", None)
    if parent is None:
        return doc
    if not isinstance(parent, str):
        raise SpecError(f"{path}: extends must be a file name, got {parent!r}")
    return _merge(read_spec_doc(path.parent / parent, (*_seen, path.resolve())), doc)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job spec; raises ``SpecError`` with one line."""
    return parse_spec(apply_overrides(read_spec_doc(Path(path)), overrides or []))
