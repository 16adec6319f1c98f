"""Offline teaching against a real local Ray and real webdataset shards.

`distill teach` runs two digits teachers (random weights: what is checked is
plumbing, not accuracy) over the packed digits, two augmented views per
sample. The shards it writes must be keyed like the data; a live teacher pool
shown the same views must give the same soft labels and hints (within fp16
rounding); ``OfflineTeacher`` must hand the student exactly the stored view
with its labels; and a stale cache must be refused in one line.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml

from distill.cli import main
from distill.data import load_meta, load_split, train_loader
from distill.data.loader import CorruptCounter, decode_sample
from distill.data.meta import DataError
from distill.data.soft_labels import OfflineTeacher, SoftLabels, pick_views
from distill.data.views import apply_views, draw_views
from distill.driver.stages import check_offline
from distill.spec import parse_spec
from teachers.archs import create_teacher
from teachers.client import TeacherOutput, TeacherPool
from teachers.offline import FORMAT_VERSION, ViewBatch, sample_records
from teachers.service import TeacherConfig, start_replicas, stop_replicas

ROOT = Path(__file__).resolve().parents[1]
HINTS = {"cnn": ["stages.1"], "mlp": ["stages.0"]}


def test_views_are_reproducible_crops_and_flips():
    v = draw_views("0001234", 7, 5, 2, True)
    assert v.dtype == np.int16 and v.shape == (5, 3)
    assert np.array_equal(v, draw_views("0001234", 7, 5, 2, True))
    assert not np.array_equal(v, draw_views("0001235", 7, 5, 2, True))
    assert v[:, :2].min() >= 0 and v[:, :2].max() <= 4 and set(v[:, 2]) <= {0, 1}
    assert not draw_views("k", 0, 8, 0, False).any()  # no augmentation: every view is the image itself

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    views = np.array([[0, 2, 1], [1, 1, 0]], dtype=np.int16)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    out = apply_views(x, views, 1)
    assert torch.equal(out[0], padded[0, :, 0:4, 2:6].flip(-1))
    assert torch.equal(out[1], x[1])  # corner (1, 1) in the 1-padded image is the original
    keys = [f"{i:07d}" for i in range(200)]
    picks = pick_views(keys, 0, 3, 4)
    assert np.array_equal(picks, pick_views(keys, 0, 3, 4)) and set(picks) == {0, 1, 2, 3}
    assert not np.array_equal(picks, pick_views(keys, 0, 4, 4))


def test_topk_records_round_trip(tmp_path):
    """The stored format alone (no Ray): top-k logits and hints with upper-case paths come back as sent."""
    n, views, classes = 6, 3, 12
    batch = ViewBatch("train-000000.tar", [f"k{i}" for i in range(n)],
                      np.stack([draw_views(f"k{i}", 0, views, 2, True) for i in range(n)]),
                      torch.zeros(n * views, 1, 4, 4))
    g = torch.Generator().manual_seed(0)
    out = TeacherOutput([torch.randn(n * views, classes, generator=g) for _ in range(2)],
                        [{"Block.A": torch.randn(n * views, 4, 2, 2, generator=g).half()}, {}])
    with wds.TarWriter(str(tmp_path / batch.shard), encoder=False) as sink:
        for record in sample_records(batch, out, "topk", 3):
            sink.write(record)
    meta = {"format": FORMAT_VERSION, "teachers": ["a", "b"], "hints": [["Block.A"], []],
            "num_classes": classes, "padding": 2, "views": views, "hflip": True, "shards": {batch.shard: n},
            "count": n}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    labels = SoftLabels(tmp_path, [batch.shard])
    assert np.array_equal(labels.views, batch.views)
    rows, chosen = labels.rows(["k4", "k1"]), np.array([2, 0])
    back = labels.output(rows, chosen)
    flat = rows * views + chosen  # sample-major, as the teachers saw them
    for t in range(2):
        z = out.logits[t][flat]
        idx = z.topk(3, dim=1).indices
        torch.testing.assert_close(back.logits[t].gather(1, idx), z.gather(1, idx).half().float())
        assert (back.logits[t].scatter(1, idx, 0) == torch.full_like(z, -1e4).scatter(1, idx, 0)).all()
    assert torch.equal(back.hints[0]["Block.A"], out.hints[0]["Block.A"][flat]) and back.hints[1] == {}
    with pytest.raises(DataError, match="'nope' has no stored soft labels"):
        labels.rows(["k0", "nope"])


def _teacher_files(folder: Path) -> dict[str, Path]:
    files = {}
    for name, arch in (("cnn", "digits_cnn"), ("mlp", "digits_mlp")):
        torch.manual_seed(len(name))
        files[name] = folder / f"{name}.pt"
        torch.save(create_teacher(arch).state_dict(), files[name])
    return files


@pytest.fixture(scope="module")
def taught(tmp_path_factory, digits_root, ray_session):
    """`distill teach` run once through the CLI: (config path, spec, folder, teacher files)."""
    tmp = tmp_path_factory.mktemp("offline")
    files = _teacher_files(tmp)
    doc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    doc["name"] = "offl"
    doc["data"]["source"] = str(digits_root)
    doc["data"]["augment"] = {"crop_padding": 1, "hflip": True}
    doc["teachers"].update({"views": 2, "output": "fp16", "window": 3})
    for m in doc["teachers"]["members"]:
        m.update({"source": str(files[m["name"]]), "hints": HINTS[m["name"]],
                  "resources": {"num_cpus": 0.25}})
        m.pop("train")
    doc["output"] = {"dir": str(tmp / "run")}
    config = tmp / "offl.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert main(["teach", str(config), "--batch-size", "128"]) == 0
    spec = parse_spec(doc)
    return config, spec, digits_root / "soft-offl", files


def test_teach_writes_shards_keyed_like_the_data(taught, digits_root):
    _, spec, folder, _ = taught
    data = load_meta(digits_root)
    soft = json.loads((folder / "meta.json").read_text())
    assert soft["teachers"] == ["cnn", "mlp"] and soft["hints"] == [HINTS["cnn"], HINTS["mlp"]]
    assert soft["views"] == 2 and soft["count"] == data.count("train")
    assert sorted(p.name for p in folder.glob("*.tar")) == data.splits["train"]["shards"]
    for shard in data.splits["train"]["shards"][:2]:
        samples = wds.tarfile_to_samples()(iter([{"url": str(digits_root / shard)}]))
        data_keys = [s["__key__"] for s in samples]
        with tarfile.open(folder / shard) as tar:
            names = tar.getnames()
        assert list(dict.fromkeys(n.split(".", 1)[0] for n in names)) == data_keys  # same keys, same order
        first = {n.split(".", 1)[1] for n in names if n.startswith(data_keys[0] + ".")}
        assert first == {"views.npy", "logits.npy", "hint0_0.npy", "hint1_0.npy"}
    assert check_offline(spec.model_copy(update={"teachers": spec.teachers.model_copy(
        update={"mode": "offline"})}), digits_root, data) == folder


def test_online_soft_labels_equal_offline(taught, digits_root):
    """A live pool shown the stored views answers what was stored (fp16 on both paths)."""
    _, spec, folder, files = taught
    data = load_meta(digits_root)
    handles = []
    for m in spec.teachers.members:
        config = TeacherConfig(name=m.name, source=str(files[m.name]), format="state_dict", arch=m.arch,
                               hints=HINTS[m.name], output="fp16", num_classes=10, input_shape=(1, 8, 8))
        handles.append(start_replicas(config, 1, num_cpus=0.25))
    try:
        pool = TeacherPool(["cnn", "mlp"], handles)
        shard = data.shard_paths(digits_root, "train")[3]
        labels = SoftLabels(folder, [shard])
        samples = [decode_sample(s, data) for s in wds.tarfile_to_samples()(iter([{"url": shard}]))]
        x = torch.stack([s[0] for s in samples])
        rows = labels.rows([s[2] for s in samples])
        for v in range(2):
            chosen = np.full(len(rows), v)
            online = pool(apply_views(x, labels.views[rows, chosen], labels.padding))
            offline = labels.output(rows, chosen)
            for t in range(2):
                torch.testing.assert_close(offline.logits[t], online.logits[t], rtol=1e-3, atol=1e-3)
                for path, h in online.hints[t].items():
                    torch.testing.assert_close(offline.hints[t][path].float(), h.float(),
                                               rtol=1e-3, atol=1e-3)
        assert not torch.equal(labels.output(rows, np.zeros(len(rows), int)).logits[0],
                               labels.output(rows, np.ones(len(rows), int)).logits[0])  # views differ
    finally:
        for h in handles:
            stop_replicas(h)


def test_offline_teacher_feeds_stored_views(taught, digits_root):
    _, spec, folder, _ = taught
    data = load_meta(digits_root)
    loader = train_loader(digits_root, data, batch_size=32, steps_per_epoch=5, rank=0, world=1, seed=0,
                          shuffle_buffer=50, num_workers=0, crop_padding=0, hflip=False,
                          counter=CorruptCounter("fail"))
    labels = SoftLabels(folder, data.shard_paths(digits_root, "train"))
    assert len(labels) == data.count("train")
    stream = OfflineTeacher(loader, labels, seed=0, length=5)
    plain, _ = load_split(digits_root, data, "train")
    index = {k: i for i, k in enumerate(labels.keys)}
    epochs = []
    for _ in range(2):
        seen = []
        for (x, y, keys), out in stream:
            assert x.shape == (32, 1, 8, 8) and y.shape == (32,) and len(out.logits) == 2
            rows = labels.rows(keys)
            chosen = pick_views(keys, 0, len(epochs), 2)
            expected = apply_views(plain[[index[k] for k in keys]], labels.views[rows, chosen], 1)
            assert torch.equal(x, expected)
            torch.testing.assert_close(out.logits[1], labels.output(rows, chosen).logits[1])
            assert out.hints[0]["stages.1"].shape == (32, 128, 4, 4)
            seen.append(keys)
        epochs.append(seen)
    assert len(epochs[0]) == 5 and epochs[0] != epochs[1]  # each epoch reshuffles and re-draws views


def test_stale_or_missing_cache_is_refused(taught, digits_root, tmp_path):
    config, spec, folder, files = taught
    data = load_meta(digits_root)
    offline = spec.teachers.model_copy(update={"mode": "offline"})
    with pytest.raises(DataError, match="made with .*'views': 2.*asks for .*'views': 3"):
        check_offline(spec.model_copy(update={"teachers": offline.model_copy(update={"views": 3})}),
                      digits_root, data)
    with pytest.raises(DataError, match=r"made by teachers \['cnn', 'mlp'\], the spec has \['cnn'\]"):
        check_offline(spec.model_copy(update={"teachers": offline.model_copy(
            update={"members": offline.members[:1]})}), digits_root, data)
    with pytest.raises(DataError, match="run `distill teach CONFIG` first"):
        check_offline(spec.model_copy(update={"teachers": offline.model_copy(
            update={"offline_dir": tmp_path / "nothing"})}), digits_root, data)
    changed = tmp_path / "cnn.pt"
    state = torch.load(files["cnn"])
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, changed)
    members = [offline.members[0].model_copy(update={"source": changed}), offline.members[1]]
    with pytest.raises(DataError, match="teacher 'cnn' changed since the soft labels were made"):
        check_offline(spec.model_copy(update={"teachers": offline.model_copy(update={"members": members})}),
                      digits_root, data)
    assert main(["run", str(config), "--set", "teachers.mode=offline", "--set", "teachers.views=3"]) == 2
