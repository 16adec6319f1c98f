"""The job spec: overrides work, and each kind of bad spec fails with its one-line error, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def demo_doc() -> dict:
    return yaml.safe_load(DEMO.read_text())


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_demo_spec_loads_and_overrides_apply():
    spec = load_spec(DEMO, ["trainer.epochs=3", "teachers.members.1.replicas=2", "cluster.address=auto"])
    assert spec.trainer.epochs == 3
    assert spec.teachers.members[1].replicas == 2
    assert spec.cluster.address == "auto"
    assert [t.type for t in spec.loss.terms] == ["ce", "kd"]


def test_teacher_list_shorthand():
    doc = demo_doc()
    doc["teachers"] = doc["teachers"]["members"]
    spec = load_spec_from(doc)
    assert [m.name for m in spec.teachers.members] == ["cnn", "mlp"]


def load_spec_from(doc: dict):
    from distill.spec import parse_spec

    return parse_spec(doc)


BAD_SPECS = [
    ("unknown key", lambda d: d["trainer"].update(epochz=3), "trainer.epochz: Extra inputs are not permitted"),
    ("wrong type", lambda d: d["trainer"].update(epochs="many"), "trainer.epochs: Input should be a valid integer"),
    ("bad enum", lambda d: d["teachers"].update(combine="vote"), "teachers.combine: Input should be"),
    ("out of range", lambda d: d["trainer"].update(deepspeed_stage=4), "trainer.deepspeed_stage"),
    ("zero replicas", lambda d: d["teachers"]["members"][0].update(replicas=0), "teachers.members.0.replicas"),
    ("unknown loss", lambda d: d["loss"]["terms"].append({"type": "magic"}), "unknown term 'magic'"),
    ("kd without teachers", lambda d: d["teachers"].update(mode="none"), "needs teachers"),
    ("duplicate teacher", lambda d: d["teachers"]["members"][1].update(name="cnn"), "teacher names must be unique"),
    ("unknown kd teacher", lambda d: d["loss"]["terms"][1].update(teacher="vit"), "no teacher named 'vit'"),
    ("bad normalize", lambda d: d["data"].update(normalize={"mean": [0.5], "std": [0.0]}), "data.normalize"),
    ("simulate_export under ZeRO-3",
     lambda d: (d["student"].update(quantization={"scheme": "ttq", "simulate_export": True}),
                d["trainer"].update(deepspeed_stage=3)), "trainer.deepspeed_stage 3 partitions them"),
    ("simulate_export in bf16",
     lambda d: (d["student"].update(quantization={"scheme": "ttq", "simulate_export": True}),
                d["trainer"].update(precision="bf16")), "trainer.precision is 'bf16'"),
]


@pytest.mark.parametrize("label,mutate,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_one_line_error(tmp_path, label, mutate, message):
    doc = demo_doc()
    mutate(doc)
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, doc))
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="expected key.sub=value"):
        load_spec(DEMO, ["trainer.epochs"])
    with pytest.raises(SpecError, match="config file not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_exits_2_with_one_line(tmp_path):
    doc = demo_doc()
    doc["trainer"]["batch_size"] = -1
    proc = _cli("run", str(write(tmp_path, doc)), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer.batch_size")


def test_missing_teacher_file_and_class_mismatch(tmp_path, digits_root):
    """File checks run before training: a missing teacher file, and a teacher with 9 classes."""
    import torch

    from distill.data import load_meta
    from distill.driver.checks import check_job
    from teachers.archs import create_teacher

    doc = demo_doc()
    doc["data"]["source"] = str(digits_root)
    for m in doc["teachers"]["members"]:
        m["source"] = str(tmp_path / f"{m['name']}.pt")
    spec = load_spec(write(tmp_path, doc))
    meta = load_meta(digits_root)
    with pytest.raises(SpecError, match=r"teachers.members.0.source: file not found"):
        check_job(spec, meta)
    torch.save(create_teacher("digits_cnn", num_classes=10).state_dict(), tmp_path / "cnn.pt")
    torch.save(create_teacher("digits_mlp", num_classes=9).state_dict(), tmp_path / "mlp.pt")
    doc["teachers"]["members"][1]["arch_options"] = {"num_classes": 9}
    spec = load_spec(write(tmp_path, doc))
    with pytest.raises(SpecError, match=r"teachers.members.1: .*9 classes but the data has 10"):
        check_job(spec, meta)
    doc["teachers"]["members"][1]["arch_options"] = {}
    doc["student"]["num_classes"] = 7
    spec = load_spec(write(tmp_path, doc))
    with pytest.raises(SpecError, match="student.num_classes: 7"):
        check_job(spec, meta)


def test_help_describes_every_command():
    proc = _cli("--help", cwd=ROOT)
    for word in ("run", "teachers", "data"):
        assert word in proc.stdout
    proc = _cli("run", "--help", cwd=ROOT)
    for word in ("--set", "--address", "--resume", "config"):
        assert word in proc.stdout


def test_extends_merges_base_beneath_and_replaces_lists(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(demo_doc()))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "name": "child", "trainer": {"epochs": 2},
        "loss": {"terms": [{"type": "ce"}]}}))
    spec = load_spec(tmp_path / "child.yaml", ["trainer.lr=0.2"])
    assert spec.name == "child" and spec.trainer.epochs == 2 and spec.trainer.lr == 0.2
    assert spec.trainer.batch_size == demo_doc()["trainer"]["batch_size"]  # merged from the base
    assert [t.type for t in spec.loss.terms] == ["ce"]  # lists are replaced, not appended
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(SpecError, match="loops back"):
        load_spec(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(SpecError, match="missing.yaml: config file not found"):
        load_spec(tmp_path / "orphan.yaml")


def test_cifar10_recipes_load():
    recipes = sorted((ROOT / "configs" / "cifar10").glob("*.yaml"))
    assert len(recipes) >= 12
    for path in recipes:
        spec = load_spec(path)
        assert spec.data.val_per_class == 500 and spec.data.normalize is not None
        assert spec.student.variant == "cifar"
        if path.stem.endswith("_hard"):
            assert spec.teachers.mode == "none" and [t.type for t in spec.loss.terms] == ["ce"]
        if "_ttq" in path.stem:
            assert spec.student.quantization.scheme == "ttq"


def test_pack_tar_image_folder_with_fixed_normalization(tmp_path):
    """An image folder inside a .tar packs like the folder itself, normalization as given."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from distill.data import ensure_shards, load_meta
    from distill.data.loader import decode_sample
    from distill.data.meta import DataError

    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "imgs.tar", "w") as tar:
        for cls in ("cat", "ant"):
            for i in range(4):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(buf, format="PNG")
                info = tarfile.TarInfo(f"train/{cls}/{i:04d}.png")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    norm = ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    meta = ensure_shards(str(tmp_path / "imgs.tar"), tmp_path / "shards", shard_size=3, val_per_class=1,
                         normalize=norm)
    assert meta.classes == ["ant", "cat"] and (meta.mean, meta.std) == (norm[0], norm[1])
    assert (meta.count("train"), meta.count("val")) == (6, 2)
    import webdataset as wds

    assert load_meta(tmp_path / "shards").mean == norm[0]
    assert meta.train_order == "shuffled:0"  # folders are read class by class; shards must mix them
    train = [s["__key__"] for s in wds.WebDataset(meta.shard_paths(tmp_path / "shards", "train"), shardshuffle=False)]
    assert sorted(train) == [f"{c}_{i:04d}" for c in ("ant", "cat") for i in range(3)] and train != sorted(train)
    assert {k[:3] for k in train[:3]} == {"ant", "cat"}  # the first shard holds both classes
    vals = [s["__key__"] for s in wds.WebDataset(meta.shard_paths(tmp_path / "shards", "val"), shardshuffle=False)]
    assert vals == ["ant_0003", "cat_0003"]  # the last file (sorted) of each class
    sample = next(iter(wds.WebDataset(meta.shard_paths(tmp_path / "shards", "val"), shardshuffle=False)))
    x, y, _ = decode_sample(sample, meta)
    with tarfile.open(tmp_path / "imgs.tar") as tar:
        raw = np.asarray(Image.open(tar.extractfile("train/ant/0003.png")), dtype=np.float32) / 255.0
    expected = (raw - np.array(norm[0])) / np.array(norm[1])
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="data.normalize"):
        ensure_shards(str(tmp_path / "imgs.tar"), tmp_path / "shards", shard_size=3, val_per_class=1,
                      normalize=([0.1, 0.1, 0.1], [1.0, 1.0, 1.0]))


def test_cluster_templates_name_real_recipes_and_valid_overrides():
    """The RayJob entrypoint's spec and --set overrides validate (a typo there fails on a cluster)."""
    import shlex

    job = yaml.safe_load((ROOT / "configs" / "cluster" / "kuberay-rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    config = next(a for a in argv if a.endswith(".yaml"))
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    spec = load_spec(ROOT / config, overrides)
    assert spec.teachers.mode == "online" and spec.cluster.use_gpu
    assert all(str(m.source).startswith("/shared/") for m in spec.teachers.members)
    launcher = (ROOT / "configs" / "cluster" / "ray-cluster.yaml").read_text()
    assert config in launcher
