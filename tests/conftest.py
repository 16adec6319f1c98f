"""Shared fixtures: one local Ray for the whole session, small real data.

``ray.init()`` costs ~7 s here, so every test that needs Ray shares one
instance kept on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from cluster import ray_env

    ray_env.connect(None, namespace="distill-tests", num_cpus=4)
    yield ray
    ray_env.shutdown()


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """scikit-learn digits packed into shards once per session (real images, ships with sklearn)."""
    from distill.data import pack_source

    root = tmp_path_factory.mktemp("digits")
    pack_source("sklearn-digits", root, shard_size=100, val_per_class=30)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Their models and shapes are tiny; on a shared 2-core machine two threads spin against other
    jobs' and make forwards many times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
