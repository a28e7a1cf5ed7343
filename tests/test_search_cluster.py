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
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus", "1", "--temp-dir", temp_dir,
               "--node-ip-address", "127.0.0.1", "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats", *args]
    return subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` session (it stops its node), then SIGKILL what is left of it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
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
        deadline = time.time() + 60
        while time.time() < deadline:
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
import json, sys, time
sys.path.insert(0, {tests!r})
import ray
import search_helpers
ray.cloudpickle.register_pickle_by_value(search_helpers)
from archdsl.search import run_search

nodes = []
def watch(progress):  # run_search joined the cluster: count its live nodes while trials run
    if progress.phase == "searching" and ray.is_initialized():
        nodes.append(sum(node["Alive"] for node in ray.nodes()))

deadline = time.time() + 60
while True:  # the worker node may still be joining
    ray.init(address={address!r}, log_to_driver=False)
    alive = sum(node["Alive"] for node in ray.nodes())
    ray.shutdown()
    if alive >= 2 or time.time() > deadline:
        break
    time.sleep(1)
result = run_search(None, budget="25M@32", img_size=32, samples=4, searcher="random", seed=3, baselines=False,
                    objective=search_helpers.SlowParams({log!r}, 2.0), address={address!r}, cpus_per_trial=1,
                    out={out!r}, progress=watch)
json.dump({{"done": result.progress.done, "nodes": max(nodes), "connected_after": ray.is_initialized()}}, open({report!r}, "w"))
"""


def test_search_on_a_cluster_by_address(cluster, tmp_path):
    address, env = cluster
    log, report, out = tmp_path / "evaluations.log", tmp_path / "report.json", tmp_path / "out"
    script = DRIVER.format(tests=str(Path(__file__).parent), address=address, log=str(log), out=str(out), report=str(report))
    finished = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    outcome = json.loads(report.read_text())
    assert outcome == {"done": 4, "nodes": 2, "connected_after": False}  # it disconnected; the cluster stays the test's
    pids = {int(line.split()[1]) for line in log.read_text().splitlines()}
    assert len(pids) >= 2  # two nodes of one CPU each ran trials side by side
    assert json.loads((out / "summary.json").read_text())["trials"] == {"done": 4, "failed": 0}
