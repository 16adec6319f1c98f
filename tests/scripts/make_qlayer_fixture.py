"""Write tests/data/qlayers_state_v1.pt: state dicts of small quantized nets, one per scheme, as
the code before the scheme classes (commit 4385e19, students/qlayers.py with one mixin) saved
them, with the eval outputs they gave on a fixed input. tests/test_quantize.py loads them into
today's layers: checkpoints written before the change must still load and compute the same.

Run once, from the repository root of that commit (it is kept to say how the file was made):
    PYTHONPATH=$PWD python tests/scripts/make_qlayer_fixture.py
"""

from __future__ import annotations

import torch
from torch import nn

from students.export import export
from students.quantize import SCHEMES, quantize


def net() -> nn.Sequential:
    """Stem, a depthwise-separable block, a 1x1 conv, a hidden linear, a classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 10),
    )  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)  # as the test runs (one_thread): the same float sums, bit for bit
    blob = {"input": torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))}
    for scheme in SCHEMES:
        torch.manual_seed(0)
        model = quantize(net(), scheme, skip_depthwise=False)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(3):  # training forwards: TTQ's latent bound, int8 observers, BN statistics
            x = torch.randn(16, 1, 8, 8)
            loss = model(x).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(blob["input"])
            entry = {"state": model.state_dict(), "output": out, "export_state": model[6].export_state()}
            if scheme in ("twn", "ttq", "binary-connect", "xnor"):  # the packed export's output too
                entry["packed_output"] = export(model)(blob["input"])
        blob[scheme] = entry
    torch.save(blob, "tests/data/qlayers_state_v1.pt")


if __name__ == "__main__":
    main()
