"""Feature terms' layers and shapes, settled in the driver before any worker starts.

FitNets, attention transfer and FSP read intermediate features of the student
and of one teacher. Two things follow from the spec alone and are worked out
here, once: which teacher layers each actor must return (its own ``hints``
plus every layer a term reads), and the shapes the terms build their
regressors for. The shapes come from a dry run on one small batch: the
student through ``FeatureTap``, each teacher through ``capture_hints`` (the
same capture the actors use), so a user never writes ``student_shape`` by
hand and a wrong path fails here, in seconds, with the term named. Shapes the
spec does give are checked against the dry run.

Every term is then built once with its final options, so a bad option is a
one-line ``SpecError`` now rather than a traceback inside a Ray worker.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distill.losses import LossTerm, build_term
from distill.spec import JobSpec, LossTermSpec, SpecError
from distill.train.hooks import FeatureTap

# Shape options a dry run fills, per term type: (student side, teacher side, one shape or a path->shape map).
SHAPE_OPTIONS: dict[str, tuple[str, str, bool]] = {
    "hint": ("student_shape", "teacher_shape", False),
    "fsp": ("student_shapes", "teacher_shapes", True),
    "crd": ("student_shape", "teacher_shape", False),
    "reviewkd": ("student_shapes", "teacher_shapes", True),
}


def _probe_term(i: int, term: LossTermSpec) -> LossTerm:
    """The term built only to ask which layers it reads (FitNets' shapes are placeholders here;
    the real ones, given or measured, are checked when the term is built for good)."""
    options = term.options()
    if term.type == "hint":
        options.update(student_shape=[1], teacher_shape=[1])
    try:
        return build_term(term.type, term.label(), **options)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"loss.terms.{i}: {exc}") from None


def term_feature_paths(spec: JobSpec) -> tuple[list[str], dict[str, list[str]]]:
    """(student layers, {teacher name: layers}) that the loss terms read, in first-use order."""
    student: dict[str, None] = {}
    teachers: dict[str, dict[str, None]] = {}
    for i, term in enumerate(spec.loss.terms):
        probe = _probe_term(i, term)
        student.update(dict.fromkeys(probe.student_hint_paths()))
        for name, path in probe.teacher_hint_paths():
            teachers.setdefault(name, {})[path] = None
    return list(student), {name: list(paths) for name, paths in teachers.items()}


def teacher_hint_paths(spec: JobSpec) -> dict[str, list[str]]:
    """Each teacher's hint list for its actors: its own ``hints`` plus the layers the terms read."""
    _, needed = term_feature_paths(spec)
    return {m.name: list(dict.fromkeys([*m.hints, *needed.get(m.name, [])])) for m in spec.teachers.members}


def _student_shapes(student: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, list[int]]:
    tap = FeatureTap(student, paths)
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            student(x)
        return {p: list(f.shape[1:]) for p, f in tap.pop().items()}
    finally:
        tap.remove()
        student.train(was_training)


def _teacher_shapes(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, list[int]]:
    from teachers.hints import capture_hints

    with torch.inference_mode():
        _, feats = capture_hints(model, x, paths)
    return {p: list(f.shape[1:]) for p, f in feats.items()}


def _check_paths(spec: JobSpec, student: nn.Module, teachers: dict[str, nn.Module], x: torch.Tensor) -> None:
    """One-line errors naming the term whose student or teacher layer does not exist."""
    from teachers.hints import HintError

    top = [n for n, _ in student.named_children()]
    for i, term in enumerate(spec.loss.terms):
        probe = _probe_term(i, term)
        for path in probe.student_hint_paths():
            try:
                student.get_submodule(path)
            except AttributeError:
                raise SpecError(f"loss.terms.{i}: the student has no layer {path!r} "
                                f"(its top-level modules are {top})") from None
        for name, path in probe.teacher_hint_paths():
            if name not in teachers:
                raise SpecError(f"loss.terms.{i}: teacher {name!r} is not loaded "
                                f"(teachers.mode: {spec.teachers.mode})")
            try:
                _teacher_shapes(teachers[name], [path], x)
            except HintError as exc:
                raise SpecError(f"loss.terms.{i}: teacher {name!r}: {exc}") from None


def _fill(i: int, term: dict[str, Any], key: str, found: Any) -> None:
    given = term.get(key)
    if given is None:
        term[key] = found
        return
    norm = {k: [int(v) for v in s] for k, s in given.items()} if isinstance(given, dict) else [
        int(v) for v in given]
    if isinstance(found, dict):
        norm = {k: v for k, v in norm.items() if k in found}
    if norm != found:
        raise SpecError(f"loss.terms.{i}.{key}: given {given} but the dry run measured {found}")


def resolve_feature_terms(spec: JobSpec, student: nn.Module, teachers: dict[str, nn.Module],
                          input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The spec as a dict with every feature term's shapes filled in, each term built once as a check.

    ``teachers`` are the locally loaded teacher models (``distill.driver.checks``);
    ``input_shape`` is one sample's (C, H, W).
    """
    doc = copy.deepcopy(spec.model_dump(mode="json"))
    student_paths, teacher_paths = term_feature_paths(spec)
    x = torch.zeros(2, *input_shape)
    _check_paths(spec, student, teachers, x)
    s_shapes = _student_shapes(student, student_paths, x) if student_paths else {}
    t_shapes = {name: _teacher_shapes(teachers[name], paths, x) for name, paths in teacher_paths.items()}

    for i, term in enumerate(spec.loss.terms):
        if term.type not in SHAPE_OPTIONS:
            continue
        s_key, t_key, per_path = SHAPE_OPTIONS[term.type]
        probe = _probe_term(i, term)
        s_found = {p: s_shapes[p] for p in probe.student_hint_paths()}
        t_found = {p: t_shapes[t][p] for t, p in probe.teacher_hint_paths()}
        entry = doc["loss"]["terms"][i]
        _fill(i, entry, s_key, s_found if per_path else next(iter(s_found.values())))
        _fill(i, entry, t_key, t_found if per_path else next(iter(t_found.values())))

    built = []
    for i, entry in enumerate(doc["loss"]["terms"]):
        options = {k: v for k, v in entry.items() if k not in ("type", "weight", "name")}
        try:
            built.append(build_term(entry["type"], entry.get("name") or entry["type"], **options))
        except (ValueError, TypeError) as exc:
            raise SpecError(f"loss.terms.{i}: {exc}") from None
    check_schedule(built, spec.trainer.epochs)
    return doc


def check_schedule(terms: list[LossTerm], epochs: int) -> None:
    """Every epoch needs a term to train on: a FitNets stage with no KD/CE after it would leave
    epochs with nothing to minimize (and nothing for the optimizer to step)."""
    for epoch in range(epochs):
        if not any(t.active(epoch) for t in terms):
            raise SpecError(f"loss.terms: no term is active in epoch {epoch} (check stage_epochs / "
                            f"start_epoch against trainer.epochs={epochs})")
