from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference material not found at {REFERENCE}: the repository must sit beside shared/")
    return REFERENCE


@pytest.fixture(scope="session")
def official(reference) -> dict:
    """official.yaml: exact parameter counts and fvcore FLOPs of the authors' code."""
    return yaml.safe_load((reference / "official.yaml").read_text())


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with two CPUs, shared by a module's search tests (its start-up is the slow part) and
    shut down after them, so that no Ray of this process outlives the module (the cluster test starts its own)."""
    import ray
    import search_helpers

    # Ray starts its workers at nice 15; on a busy machine they then take minutes to import torch
    # (seen here: 8 trials of a parameter count took 12 min beside a training job), so the trials run
    # at the tests' own priority. The raylet reads RAY_-prefixed settings from its environment.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    ray.cloudpickle.register_pickle_by_value(search_helpers)  # the test objectives travel to the workers
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """torch at one thread for the test: tiny networks (thread hand-offs cost more than their
    maths) and bf16 without native instructions (two threads of a busy 2-core machine took
    147 s where one took 0.7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
