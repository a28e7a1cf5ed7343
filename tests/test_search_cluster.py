"""A search that joins a Ray cluster by address: a head and a worker node started here, on
127.0.0.1, with `ray start`, and stopped at the end (only the processes this test started).
The nodes and the driver share a token (Ray's token authentication), as a real cluster would;
the driver runs in its own process so that it reads that token the way a user's shell would."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray_start(env: dict, temp_dir: str, *args: str) -> subprocess.Popen:
    # a private --temp-dir: Ray records "the current cluster" there, not in /tmp/ray where a later
    # ray.init() on this machine would find it
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        "--num-cpus",
        "1",
        "--temp-dir",
        temp_dir,
        "--node-ip-address",
        "127.0.0.1",
        "--object-store-memory",
        str(200 * 1024 * 1024),
        "--disable-usage-stats",
        *args,
    ]
    return subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` session (it stops its node), then SIGKILL what is left of it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)  # it may take longer to stop its node gracefully: the SIGKILLs below finish it
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for line in subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and int(parts[1]) == process.pid:
            try:
                os.kill(int(parts[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def cluster():
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    head = _ray_start(env, temp_dir, "--head", "--port", str(port), "--include-dashboard", "false")
    worker = None
    try:
        for _ in range(120):  # the head is up when its port accepts (the driver's ray.init reports it otherwise)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        worker = _ray_start(env, temp_dir, "--address", f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}", env
    finally:
        for process in (worker, head):
            if process is not None:
                _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


DRIVER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import ray
from archdsl.search import run_search
from archdsl.search.objectives import Objective


class WhereItRan(Objective):
    \"\"\"The parameter count, logging the Ray cluster (its GCS address) and node each trial ran on.\"\"\"

    name = "where_it_ran"
    uses_data = False

    def score(self, model, context):
        runtime = ray.get_runtime_context()
        with open({log!r}, "a") as handle:
            handle.write(json.dumps({{"gcs": runtime.gcs_address, "node": runtime.get_node_id(), "pid": os.getpid()}}) + "\\n")
        return float(sum(p.numel() for p in model.parameters()))


result = run_search(None, budget="25M@32", img_size=32, samples=4, searcher="random", seed=3, baselines=False,
                    objective=WhereItRan(), address={address!r}, cpus_per_trial=1, out={out!r})
connected_after = ray.is_initialized()
# the cluster's nodes listed after the search, so a worker node that joined during it counts
ray.init(address={address!r}, log_to_driver=False)
cluster_nodes = {{node["NodeID"] for node in ray.nodes()}}
cluster_gcs = ray.get_runtime_context().gcs_address  # Ray names the head by its node IP
ray.shutdown()
json.dump({{"done": result.progress.done, "cluster_nodes": sorted(cluster_nodes), "cluster_gcs": cluster_gcs, "driver_pid": os.getpid(),
            "connected_after": connected_after}}, open({report!r}, "w"))
"""


def test_search_on_a_cluster_by_address(cluster, tmp_path):
    address, env = cluster
    log, report, out = tmp_path / "evaluations.log", tmp_path / "report.json", tmp_path / "out"
    script = DRIVER.format(tests=str(Path(__file__).parent), address=address, log=str(log), out=str(out), report=str(report))
    finished = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    outcome = json.loads(report.read_text())
    assert outcome["done"] == 4 and outcome["connected_after"] is False  # it disconnected; the cluster stays the test's
    trials = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(trials) == 4
    # every trial ran in a worker of the cluster the driver reached by address (whichever node Ray chose)
    assert outcome["cluster_gcs"].rsplit(":", 1)[1] == address.rsplit(":", 1)[1]
    assert {trial["gcs"] for trial in trials} == {outcome["cluster_gcs"]}
    assert {trial["node"] for trial in trials} <= set(outcome["cluster_nodes"])
    assert outcome["driver_pid"] not in {trial["pid"] for trial in trials}
    assert json.loads((out / "summary.json").read_text())["trials"] == {"done": 4, "failed": 0, "stopped_early": 0}
