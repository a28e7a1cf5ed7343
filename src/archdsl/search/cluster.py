"""Ray: join a cluster by address or start Ray on this machine; size the trials to it."""

from __future__ import annotations

import socket

from archdsl.search.errors import option_error


def check_address(address: str) -> None:
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise option_error(
            "--address",
            address,
            "a Ray cluster address is HOST:PORT (the GCS port `ray start --head` printed, "
            "6379 by default), `auto`, or ray://HOST:PORT",
        )
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as error:
        raise option_error(
            "--address",
            address,
            f"cannot reach a Ray cluster there ({error.strerror or error}); start one "
            f"with `ray start --head --port {port}` on {host}, or leave --address out to "
            f"run on this machine",
        ) from None


def connect(address: str | None) -> bool:
    """Join `address` or start Ray on this machine; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as error:
            raise option_error("--address", address, f"cannot join the Ray cluster there: {error}") from None
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def trial_resources(cpus_per_trial: float, gpus_per_trial: float | None, training: bool) -> tuple[dict, int]:
    """A trial's resources and how many trials fit side by side on the cluster."""
    import ray

    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 1), cluster.get("GPU", 0)
    if gpus_per_trial is None:
        # GPUs when present: a whole one for training, a quarter for a proxy (a few forward passes)
        gpus_per_trial = 0 if not gpus else (1.0 if training else 0.25)
    if gpus_per_trial and not gpus:
        raise option_error("--gpus-per-trial", gpus_per_trial, "this Ray cluster has no GPUs; use 0, or join a cluster with GPUs")
    if cpus_per_trial > cpus:
        raise option_error("--cpus-per-trial", cpus_per_trial, f"this Ray cluster has only {cpus:g} CPUs")
    slots = int(cpus // cpus_per_trial) if cpus_per_trial else 1
    if gpus_per_trial:
        slots = min(slots, int(gpus // gpus_per_trial))
    return {"cpu": cpus_per_trial, "gpu": gpus_per_trial or 0}, max(1, slots)
