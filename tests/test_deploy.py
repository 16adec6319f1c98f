"""Float students in ONNX Runtime and ExecuTorch (XNNPACK), fp32 and int8, through `distill export`.

One short digits run (tests/deploy_run.py: trained weights, no Ray) is exported to every form;
each file is loaded in its own runtime and scored on the validation split. Acceptance: fp32
files agree with eager PyTorch on >= 99.9% of the images, int8 files lose at most 1 point of
top-1, every conv and linear of an ExecuTorch file runs inside the XNNPACK delegate, and a bad
request is one line on stderr with exit 2.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from distill.cli import main
from tests.deploy_run import short_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_root):
    return short_run(tmp_path_factory.mktemp("deploy") / "run", digits_root, options={"alpha": 0.25}, steps=200, lr=1e-2)


def export(run, capsys, *args: str) -> dict:
    assert main(["export", str(run), *args, "--json", "--rounds", "2"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def check_entry(e: dict, run, suffix: str) -> None:
    assert e["file"] == str(run / "export" / suffix) and e["bytes"] > 10_000
    assert e["student_top1"] > 0.5  # trained: far above the 10% of a guess
    assert set(e["latency_ms"]) == {"1", "2"} and all(ms > 0 for ms in e["latency_ms"].values())


@pytest.mark.parametrize("to, suffix", [("onnx", "student.onnx"), ("executorch", "student.pte")])
def test_fp32_agrees_with_eager(run, capsys, to, suffix):
    e = export(run, capsys, "--to", to)
    check_entry(e, run, suffix)
    assert e["form"] == "fp32" and e["agreement_top1"] >= 0.999, e
    assert abs(e["top1"] - e["student_top1"]) <= 0.001
    if to == "executorch":
        d = e["delegation"]
        assert d["undelegated_compute"] == [] and d["subgraphs"] == 1, d  # one XNNPACK call does it all


@pytest.mark.parametrize("to, suffix", [("onnx", "student-int8.onnx"), ("executorch", "student-int8.pte")])
def test_int8_within_one_point(run, capsys, to, suffix):
    e = export(run, capsys, "--to", to, "--int8")
    check_entry(e, run, suffix)
    fp32_bytes = (run / "export" / suffix.replace("-int8", "")).stat().st_size
    assert e["form"] == "int8" and e["bytes"] < 0.5 * fp32_bytes  # int8 weights: about a quarter
    assert e["top1"] >= e["student_top1"] - 0.01, e
    assert e["agreement_top1"] > 0.9
    if to == "executorch":
        assert e["delegation"]["undelegated_compute"] == [], e["delegation"]


def test_logits_match_in_each_runtime(run):
    """Beyond top-1: the fp32 files compute the student's logits to float rounding."""
    from distill.driver.stages import load_student
    from students import deploy

    test_fp32_files = [run / "export" / "student.onnx", run / "export" / "student.pte"]
    spec, root, meta, student, _, _ = load_student(run)
    from distill.data import load_split

    x = load_split(root, meta, "val")[0][:64]
    with torch.inference_mode():
        ref = student.eval()(x)
    for path in test_fp32_files:
        if not path.is_file():
            pytest.skip(f"{path.name} not exported (its test failed)")
        out = deploy.predict(deploy.load(path), x)
        assert (out - ref).abs().max() < 1e-3 * ref.abs().max(), path


def test_eval_reports_exports_beside_student(run):
    from distill.commands.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(run)
    files = {e["file"].rsplit("/", 1)[-1]: e for e in report["exports"]}
    assert {"student.onnx", "student.pte"} <= set(files)
    assert all(e["student_top1"] == pytest.approx(report["student"]["top1"]) for e in files.values())
    saved = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else None
    assert saved is None or "exports" in saved


def test_bad_requests_are_one_line(run, capsys, monkeypatch):
    err = one_line_error(capsys, ["export", str(run), "--to", "packed"])
    assert "packed" in err and "twn" in err  # a float student has no packed form; says which schemes do
    err = one_line_error(capsys, ["export", str(run), "--to", "executorch", "--kernels"])
    assert "--kernels" in err and "ternary/binary" in err
    err = one_line_error(capsys, ["export", str(run), "--to", "onnx", "--out", str(run / "x.pte")])
    assert ".onnx" in err
    err = one_line_error(capsys, ["export", str(run / "nowhere"), "--to", "onnx"])
    assert "nowhere" in err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: import raises ImportError
    err = one_line_error(capsys, ["export", str(run), "--to", "onnx", "--out", str(run / "y.onnx")])
    assert "onnxscript" in err and "pip install" in err


@pytest.mark.slow
def test_run_exports_at_the_end(tmp_path, digits_root, ray_session):
    """`output.export` in the spec: `distill run` writes and validates the files, and reports them."""
    from distill.commands.runner import prepare_data, run_job
    from distill.commands.teacher_training import train_teachers
    from distill.spec import parse_spec
    from tests.test_e2e import tiny_job

    doc = tiny_job(tmp_path, digits_root, epochs=2)
    doc["output"]["export"] = ["onnx", {"to": "executorch"}]
    spec = parse_spec(doc)
    train_teachers(spec, *prepare_data(spec))
    report = run_job(spec)
    names = [e["file"].rsplit("/", 1)[-1] for e in report["exports"]]
    assert names == ["student.onnx", "student.pte"]
    assert all(e["agreement_top1"] >= 0.999 for e in report["exports"]), report["exports"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [e["file"] for e in saved["exports"]] == [e["file"] for e in report["exports"]]


def test_deploy_benchmark_times_kept_files(tmp_path, capsys):
    """`benchmarks.deploy --files DIR` times the files of an earlier `--keep DIR` (here one
    ExecuTorch fp32 file of MobileNetV2-32) in a process of its own, without exporting again:
    a row with a measured latency and the file's bytes for it, a skipped row for every other form
    that ``--forms`` keeps, and a one-line refusal of a folder that does not exist; ``--time-file
    --series 2`` gives two batches' ms per call in one process."""
    pytest.importorskip("executorch")
    from benchmarks import deploy as bench
    from students import deploy

    arch, size, classes = bench.STUDENTS["mobilenet_v2_32"]
    model = bench.build(arch, classes, 3, None)
    path = tmp_path / "mobilenet_v2_32-executorch-fp32.pte"
    deploy.to_executorch(model, torch.randn(1, 3, size, size), path)
    argv = ["--files", str(tmp_path), "--students", "mobilenet_v2_32", "--threads", "1", "--rounds", "3", "--forms", "fp32"]
    assert bench.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    timed = [r for r in rows if "latency_ms" in r]
    assert [(r["runtime"], r["form"]) for r in timed] == [("executorch", "fp32")]
    assert timed[0]["latency_ms"] > 0 and timed[0]["bytes"] == path.stat().st_size
    assert timed[0]["speedup_vs_best_fp32_runtime"] == 1.0 and timed[0]["processes_per_file"] == 1
    assert all("skipped" in r for r in rows if r not in timed)
    assert sorted(r["runtime"] for r in rows) == ["executorch", "onnxruntime", "torch"]  # --forms fp32 only
    assert bench.main(["--time-file", str(path), "--threads", "1", "--size", str(size), "--series", "2"]) == 0
    series = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert series["file"] == path.name and len(series["series_ms"]) == 2 and min(series["series_ms"]) > 0
    with pytest.raises(SystemExit, match="no such folder"):
        bench.main(["--files", str(tmp_path / "missing")])
