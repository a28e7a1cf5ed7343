"""How long `archdsl --help`, `validate` and `build` take, as a ratio to `python -c "import torch"`
(the floor: every archdsl command imports torch), and in seconds. Median of several runs of each, alternated, in fresh
processes; run it on a quiet machine (python bench/cli_startup.py [--runs N])."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "archdsl --help": [sys.executable, "-m", "archdsl.cli", "--help"],
    "archdsl validate mixformer_b6": [sys.executable, "-m", "archdsl.cli", "validate", "mixformer_b6"],
    "archdsl build mixformer_b6": [sys.executable, "-m", "archdsl.cli", "build", "mixformer_b6"],
}


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, command in COMMANDS.items():
            times[name].append(wall_seconds(command))
    floor = statistics.median(times["import torch"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32s} median {median:6.2f} s over {runs} runs   {median / floor:5.2f}x import torch")


if __name__ == "__main__":
    main()
