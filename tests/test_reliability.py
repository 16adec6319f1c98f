"""Nothing fails silently: divergence, damaged files, specs that describe no job, killed drivers.

Each failure must end in one line that names what is wrong (exit 2 for bad input, 1 for a run that
could not finish), or, where a policy says so, be skipped and counted. The slow tests run the real
CLI (embedded Ray, Ray Train, DeepSpeed ZeRO-2) in a subprocess, the way a user meets these cases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from distill.data import DataError, check_shards, load_meta
from distill.train.checkpoint import AtomicCheckpoint, checkpoint_problem, resumable_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=timeout)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one line on stderr, ``error: ...``, and no traceback."""
    assert "Traceback" not in run.stdout + run.stderr, run.stdout[-2000:] + run.stderr[-3000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, run.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------ specs


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- name: a\n- name: b\n", "42\n", "{}\n"])
def test_a_spec_that_describes_no_job_is_refused(tmp_path, capsys, text):
    from distill.cli import main

    (tmp_path / "job.yaml").write_text(text)
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'job.yaml'}: ")


def test_no_job_message_names_the_file(tmp_path, capsys):
    from distill.cli import main

    (tmp_path / "job.yaml").write_text("# nothing here\n")
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'job.yaml'}: describes no job (the file is empty, only comments, or {{}})"]


# ------------------------------------------------------------------ checkpoints


def _deepspeed_like(folder: Path, step: int) -> Path:
    """A checkpoint folder laid out as Lightning's DeepSpeed strategy writes it (real torch.save files)."""
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    torch.save({"global_step": step, "module": {"w": torch.randn(64, 64)}},
               folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"m": torch.randn(64, 64)}},
               folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return folder


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)  # what a bad copy or disk leaves: a run of zero bytes
    path.write_bytes(bytes(data))


def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path):
    ckpts = tmp_path / "checkpoints"
    last = _deepspeed_like(ckpts / "last.ckpt", 8)
    _deepspeed_like(ckpts / "best.ckpt", 4)
    assert resumable_checkpoint(ckpts) == (str(last), [])

    _flip_middle(last / "checkpoint" / "mp_rank_00_model_states.pt")
    chosen, damaged = resumable_checkpoint(ckpts)
    assert chosen == str(ckpts / "best.ckpt")
    assert len(damaged) == 1 and damaged[0].startswith(str(last / "checkpoint" / "mp_rank_00_model_states.pt"))

    (ckpts / "best.ckpt" / "latest").write_bytes(b"\x00\x00\x00")  # the measured 'embedded null byte' case
    assert "names tag" in checkpoint_problem(ckpts / "best.ckpt")
    from rich.console import Console

    from distill.commands.runner import check_resumable

    with pytest.raises(DataError, match=r"^--resume: .*mp_rank_00_model_states.pt.*\(and 1 more\); no intact"):
        check_resumable(ckpts, Console())


def test_a_half_deleted_old_checkpoint_is_never_resumed(tmp_path):
    """A SIGKILL inside the delete of ``last.ckpt.old`` (rmtree took ``latest`` first, then died) left a
    folder DeepSpeed cannot load, which a resume over a damaged ``last`` used to pick; found by
    test_killed_driver_leaves_no_ray_and_resume_continues."""
    from distill.train.checkpoint import publish

    ckpts = tmp_path / "checkpoints"
    last = _deepspeed_like(ckpts / "last.ckpt", 8)
    old = _deepspeed_like(ckpts / "last.ckpt.old", 6)
    _deepspeed_like(ckpts / "best.ckpt", 4)
    (old / "latest").unlink()
    _flip_middle(last / "checkpoint" / "mp_rank_00_model_states.pt")
    chosen, damaged = resumable_checkpoint(ckpts)
    assert chosen == str(ckpts / "best.ckpt")
    assert damaged[1] == f"{old}: has no 'latest' file naming its checkpoint (an interrupted write or delete)"

    # publishing renames a folder out of the readable names before deleting it, and clears leftovers
    (ckpts / ".last.ckpt.old.deleting").mkdir()
    publish(_deepspeed_like(ckpts / "last.ckpt.partial", 10), last)
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert resumable_checkpoint(ckpts) == (str(last), [])


def test_truncated_plain_checkpoint_is_damaged(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(256)}}, path)
    assert checkpoint_problem(path) is None
    path.write_bytes(path.read_bytes()[:-100])
    assert checkpoint_problem(path).startswith(f"{path}: not a readable torch checkpoint")


# ------------------------------------------------------------------ data files


def _image_folder(root: Path, bad: bytes | None = b"not a png at all") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    if bad is not None:
        (root / "b" / "broken.png").write_bytes(bad)
    return root


def test_packing_a_folder_with_an_unreadable_image(tmp_path, capsys):
    from distill.cli import main

    src = _image_folder(tmp_path / "src")
    assert main(["data", "pack", str(src), str(tmp_path / "out"), "--val-per-class", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {src / 'b' / 'broken.png'}: unreadable image"), err

    assert main(["data", "pack", str(src), str(tmp_path / "out"), "--val-per-class", "2",
                 "--on-corrupt", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"skipped 1 unreadable image(s) (data.on_corrupt: skip), first {src / 'b' / 'broken.png'}" in out
    meta = load_meta(tmp_path / "out")
    assert meta.skipped == 1 and meta.count("train") + meta.count("val") == 12


def test_damaged_meta_json_and_shards(tmp_path, digits_root):
    import shutil

    root = tmp_path / "digits"
    shutil.copytree(digits_root, root)
    meta = load_meta(root)
    shards = meta.shard_paths(root, "train")
    assert check_shards(shards, "fail") == []

    Path(shards[1]).write_bytes(Path(shards[1]).read_bytes()[:700])  # truncated mid-sample
    with pytest.raises(DataError, match=rf"^{shards[1]}: damaged shard .*; repack the data"):
        check_shards(shards, "fail")
    (problem,) = check_shards(shards, "skip")
    assert problem.startswith(shards[1])

    (root / "meta.json").write_bytes(b"\x89PNG\x00\x00 not json")
    with pytest.raises(DataError, match=rf"^{root / 'meta.json'}: damaged dataset metadata"):
        load_meta(root)
    (root / "meta.json").write_text('{"classes": "0123", "channels": 1}')
    with pytest.raises(DataError, match="damaged dataset metadata"):
        load_meta(root)


def test_damaged_soft_label_cache(tmp_path, digits_root):
    from distill.data.soft_labels import SoftLabels, read_soft_meta
    from teachers.offline import FORMAT_VERSION, SOFT_META

    cache = tmp_path / "soft"
    cache.mkdir()
    (cache / SOFT_META).write_text("{ truncated")
    with pytest.raises(DataError, match=rf"^{cache / SOFT_META}: damaged soft-label metadata"):
        read_soft_meta(cache)
    (cache / SOFT_META).write_text(json.dumps({"format": FORMAT_VERSION, "padding": 0, "hints": [[]]}))
    shard = cache / "train-000000.tar"
    shard.write_bytes(b"\x00garbage" * 200)
    with pytest.raises(DataError, match=rf"^{shard}: damaged soft-label shard"):
        SoftLabels(cache, [str(shard)])


# ------------------------------------------------------------------ non-finite steps, real Lightning


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def _lightning_module():
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        """Two loss terms logged as the distill module logs them (``loss/<term>``, synced)."""

        def __init__(self) -> None:
            super().__init__()
            self.student = _Tiny()

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.student(x)
            ce = torch.nn.functional.cross_entropy(logits, y)
            l2 = logits.pow(2).mean()
            self.log("loss/ce", ce, on_step=True, sync_dist=True)
            self.log("loss/l2", l2, on_step=True, sync_dist=True)
            total = ce + 0.1 * l2
            self.log("loss/total", total, on_step=True, sync_dist=True)
            return total

        def validation_step(self, batch, batch_idx):
            self.log("val/top1", (self.student(batch[0]).argmax(1) == batch[1]).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Module()


def _batches(n: int, poison: set[int]) -> list:
    """``n`` batches; those in ``poison`` carry a NaN input, as a damaged sample or an overflow would."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(8, 4, generator=g)
        if i in poison:
            x[0, 0] = float("nan")
        out.append((x, torch.randint(0, 3, (8,), generator=g)))
    return out


def _fit(tmp_path: Path, policy: str, poison: set[int], epochs: int = 3, steps: int = 2):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from distill.train.callbacks import NonFiniteGuard

    guard = NonFiniteGuard(policy, ["ce", "l2"], lr=0.1, precision="32")
    ckpt = AtomicCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, monitor="val/top1", mode="max",
                            save_top_k=1, filename="best", steps_per_epoch=steps)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[guard, ckpt],
                         logger=TensorBoardLogger(str(tmp_path / "tb"), name="t", version="v"),
                         log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    module = _lightning_module()
    # The same batch list each epoch: batch i of epoch e is step e * steps + i + 1.
    train = _batches(steps, set())
    flat = _batches(epochs * steps, poison)
    loader = _EpochData(flat, steps)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=_Always(train[:1]))
    return guard, module, trainer


class _Always:
    """The same batches on every iteration (a validation set)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        yield from self.batches


class _EpochData:
    """Yields epoch e's slice of ``flat`` (``steps`` batches) on its e-th iteration."""

    def __init__(self, flat: list, steps: int) -> None:
        self.flat, self.steps, self.epoch = flat, steps, 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        start = self.epoch * self.steps
        self.epoch += 1
        yield from self.flat[start:start + self.steps]


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from distill.train.callbacks import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"^step 5: loss term 'ce' is not finite \(likely cause: lower "
                                             r"trainer\.lr \(now 0\.1\)"):
        _fit(tmp_path, "stop", poison={4})  # the 5th step
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4  # epoch 2's end
    assert checkpoint_problem(last) is None


def test_nonfinite_steps_skipped_and_counted(tmp_path):
    from tests.tb_events import load_events, scalar_values

    guard, module, trainer = _fit(tmp_path, "skip", poison={1, 4})
    assert guard.skipped == 2 and trainer.global_step == 6
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the NaN gradients never landed
    events = load_events(tmp_path / "tb" / "t")
    assert scalar_values(events, "train/nonfinite_skipped") == [1.0, 2.0]


# ------------------------------------------------------------------ the real CLI, end to end


@pytest.fixture(scope="module")
def job(tmp_path_factory, digits_root) -> dict:
    """The demo spec, short, with two untrained teachers (this is about failures, not accuracy)."""
    from teachers.archs import create_teacher

    folder = tmp_path_factory.mktemp("reliability")
    doc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    doc["name"] = "reliable"
    doc["data"]["source"] = str(digits_root)
    for m in doc["teachers"]["members"]:
        torch.manual_seed(0)
        torch.save(create_teacher(m["arch"], num_classes=10, in_chans=1).state_dict(), folder / f"{m['name']}.pt")
        m["source"] = str(folder / f"{m['name']}.pt")
        m["resources"] = {"num_cpus": 0.25}
    doc["trainer"].update({"epochs": 3, "steps_per_epoch": 4})
    doc["logging"] = {"tensorboard": str(folder / "tb"), "log_every_n_steps": 2}
    doc["output"] = {"dir": str(folder / "run")}
    return doc


def _write(doc: dict, path: Path, **sections) -> Path:
    doc = json.loads(json.dumps(doc))
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_damaged_teacher_file_one_line(tmp_path, job):
    bad = tmp_path / "cnn.pt"
    bad.write_bytes(Path(job["teachers"]["members"][0]["source"]).read_bytes()[:300])
    doc = json.loads(json.dumps(job))
    doc["teachers"]["members"][0]["source"] = str(bad)
    run = cli("run", str(_write(doc, tmp_path / "job.yaml")))
    assert run.returncode == 2
    assert one_error_line(run).startswith(f"error: teachers.members.0: {bad}: not a readable state dict")


@pytest.mark.slow
def test_divergence_stops_with_one_line(tmp_path, job):
    spec = _write(job, tmp_path / "job.yaml", output={"dir": str(tmp_path / "run")},
                  logging={"tensorboard": str(tmp_path / "tb")})
    run = cli("run", str(spec), "--set", "trainer.lr=1e6")
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-3000:]
    line = one_error_line(run)
    assert line.startswith("error: step ") and " is not finite (likely cause: " in line, line
    assert "trainer.lr (now 1e+06)" in line and "no checkpoint was written before it" in line, line
    assert not (tmp_path / "run" / "student.pt").exists()


def _tree(pid: int) -> dict[int, float]:
    """The process and all its descendants now, as pid -> start time (so a reused PID is not mistaken)."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    out = {}
    for p in procs:
        try:
            out[p.pid] = p.create_time()
        except psutil.NoSuchProcess:
            pass
    return out


def _still_running(tree: dict[int, float]) -> list[str]:
    alive = []
    for pid, started in tree.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(p.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def _run_until_checkpoint(argv: list[str], last: Path, log: Path) -> subprocess.Popen:
    """Start the CLI (leading its own process group, as a shell job does) and return once ``last``
    is a checkpoint it wrote."""
    before = last.stat().st_mtime_ns if last.exists() else None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distill.cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if last.exists() and last.stat().st_mtime_ns != before:
            return proc
        time.sleep(0.2)
    raise AssertionError(f"no new checkpoint (exit {proc.poll()}): {log.read_text()[-3000:]}")


def _all_gone(tree: dict[int, float], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while _still_running(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _still_running(tree), _still_running(tree)


@pytest.mark.slow
def test_killed_driver_leaves_no_ray_and_resume_continues(tmp_path, job):
    """Ctrl-C, then SIGKILL, each right after a checkpoint: no process of the run survives; then a resume
    over a damaged newest checkpoint falls back to the best one and the run finishes every step,
    printing no traceback."""
    from tests.test_multinode import _global_step

    # 20 epochs, not the fixture's 3: tiny steps finish faster than an interrupt stops the workers (idle
    # machine), and a loaded machine delivers the signal an epoch or two late; each later phase must still
    # find epochs left to checkpoint.
    spec = _write(job, tmp_path / "job.yaml", output={"dir": str(tmp_path / "run")},
                  logging={"tensorboard": str(tmp_path / "tb")}, trainer={**job["trainer"], "epochs": 20})
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"

    proc = _run_until_checkpoint(["run", str(spec)], last, tmp_path / "1.log")
    tree = _tree(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    assert proc.wait(timeout=120) == 130, (tmp_path / "1.log").read_text()[-3000:]
    assert "error: interrupted" in (tmp_path / "1.log").read_text()
    _all_gone(tree)

    proc = _run_until_checkpoint(["run", str(spec), "--resume"], last, tmp_path / "2.log")
    tree = _tree(proc.pid)
    assert len(tree) > 5, tree  # the embedded Ray's processes are in it
    proc.kill()
    proc.wait()
    _all_gone(tree)

    _flip_middle(last / "checkpoint" / "mp_rank_00_model_states.pt")
    run = cli("run", str(spec), "--resume")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-6000:]
    assert f"checkpoint damaged, passed over: {last / 'checkpoint' / 'mp_rank_00_model_states.pt'}" in out
    assert f"resuming from {last.with_name('best.ckpt')}" in out
    assert _global_step(last) == 20 * 4
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    from tests.tb_events import load_events, scalar_values

    events = load_events(tmp_path / "tb" / "reliable")  # the resumed runs continue one TensorBoard run
    assert "custom_scalars__config__" in events.PluginTagToContent("custom_scalars")
    assert scalar_values(events, "hparams/student_top1") == [pytest.approx(report["student"]["top1"])]


# ------------------------------------------------------------------ what a user reads


def test_report_table_keeps_whole_numbers_on_an_80_column_pipe():
    import io

    from rich.console import Console

    from distill.driver.report import print_report

    teacher = {"name": "resnet56_long_teacher_name", "top1": 0.9612, "params": 855_770, "bytes": 3_400_000,
               "macs": 125_000_000, "latency_ms": 12.3456, "compression_rate": 12.3456, "speedup": 6.5432}
    report = {"job": "demo", "teachers": [teacher], "ensemble_top1": 0.9700,
              "ensemble": {k: teacher[k] for k in ("params", "bytes", "macs", "latency_ms", "compression_rate",
                                                    "speedup")},
              "student": {"name": "mobilenet_v1", "top1": 0.9123, "params": 69_000, "bytes": 280_000,
                          "macs": 4_000_000, "latency_ms": 1.87}}
    out = io.StringIO()
    print_report(report, Console(file=out, width=80))  # what `| tee` and CI logs get
    text = out.getvalue()
    assert "…" not in text
    for cell in ("0.9612", "0.9700", "0.9123", "855.8k", "125.00M", "12.346", "12.35", "6.54", "latency ms",
                 "params", "teacher resnet56_long_teacher_name"):
        assert cell in text, (cell, text)


def test_loopback_address_maps_to_the_loopback_interface():
    from cluster.ray_env import bind_collectives, interface_for

    assert interface_for("127.0.0.1") == "lo"
    assert interface_for("192.0.2.123") is None  # TEST-NET-1: on no interface here
    saved = {k: os.environ.pop(k, None) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    try:
        assert bind_collectives("127.0.0.1") == "lo"
        assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "lo"
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def test_tensorboard_layout_and_hparams_read_back(tmp_path):
    """The custom-scalars layout and the hparams summary, written as a run writes them and read back with
    TensorBoard's own reader and protos."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    from distill.driver.report import write_hparams
    from distill.spec import load_spec
    from distill.train.callbacks import DASHBOARD
    from tests.tb_events import load_events, scalar_values

    run = tmp_path / "tb" / "demo" / "v1"
    with SummaryWriter(str(run)) as writer:
        writer.add_custom_scalars(DASHBOARD)
    spec = load_spec(ROOT / "configs" / "demo.yaml").model_dump(mode="json")
    report = {"student": {"top1": 0.875, "params": 69_000, "macs": 4_000_000, "bytes": 280_000},
              "ensemble_top1": 0.95}
    write_hparams(report, spec, run)

    events = load_events(run)
    (written,) = events.Tensors("custom_scalars__config__")  # the layout travels as a string tensor
    layout = layout_pb2.Layout.FromString(written.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    (acc_chart,) = [t for t in charts if t.startswith("validation top-1")]
    assert r"^val/teacher_.+_top1$" in charts[acc_chart] and r"^val/ensemble_top1$" in charts[acc_chart]
    assert any("loss" in t for t in charts) and any("teacher service" in t for t in charts)

    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["trainer.lr"].number_value == 0.1
    assert start.hparams["student.arch"].string_value == "mobilenet_v1"
    assert start.hparams["loss.terms"].string_value == "ce:0.3,kd:0.7"
    assert "data.shards" not in start.hparams and "cluster.namespace" not in start.hparams
    assert scalar_values(events, "hparams/student_top1") == [0.875]
    assert scalar_values(events, "hparams/macs") == [4_000_000]
