"""Where a search's time goes, and how fast it runs with 1 and 2 workers.

    python bench/search_bench.py [--img-size 224] [--samples 12] [--objective naswot] [--budget 2GFLOPs]

For each worker count it runs a search of the bundled default space on a fresh local Ray and
prints, per trial (medians), the split into sampling (the searcher's draw + the budget gate,
and replaying the configuration into a spec), lowering + analytic FLOPs, build and objective;
the framework's overhead (everything but the objective, as a share of the wall time the
workers were busy), and trials per minute.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--objective", default="naswot")
    parser.add_argument("--budget", default="2GFLOPs")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()

    import ray

    from archdsl.search import run_search

    print(f"default space at {args.img_size}px, objective {args.objective}, budget {args.budget}, {args.samples} trials")
    print(
        f"{'workers':>7} {'suggest':>9} {'sample':>9} {'lower':>9} {'build':>9} {'objective':>10} {'overhead':>9} "
        f"{'in-trial':>9} {'trials/min':>10}"
    )
    for workers in (int(w) for w in args.workers.split(",")):
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        with tempfile.TemporaryDirectory() as out:
            seen = {}

            def watch(progress, seen=seen):
                if progress.phase == "searching" and "start" not in seen and (progress.running or progress.done):
                    seen["start"] = time.perf_counter()  # the first trial started: Ray and the probe are done

            start = time.perf_counter()
            result = run_search(
                None,
                budget=args.budget,
                img_size=args.img_size,
                samples=args.samples,
                objective=args.objective,
                searcher="tpe",
                seed=0,
                out=out,
                baselines=False,
                cpus_per_trial=1,
                progress=watch,
            )
            end = time.perf_counter()
            ray.shutdown()
        done = [r for r in result.records if r["status"] == "done"]
        median = {
            key: statistics.median(r.get(key, 0.0) for r in done)
            for key in ("t_suggest", "t_sample", "t_lower", "t_build", "t_objective")
        }
        busy = (end - seen.get("start", start)) * workers  # worker-seconds from the first trial to the end
        objective = sum(r["t_objective"] for r in done)
        in_trial = sum(r["t_sample"] + r["t_lower"] + r["t_build"] for r in done) / max(
            1e-9, objective + sum(r["t_sample"] + r["t_lower"] + r["t_build"] for r in done)
        )
        overhead = 1 - objective / busy
        rate = len(done) / ((end - seen.get("start", start)) / 60)
        print(
            f"{workers:>7} {median['t_suggest'] * 1e3:>7.1f}ms {median['t_sample'] * 1e3:>7.1f}ms {median['t_lower'] * 1e3:>7.1f}ms "
            f"{median['t_build'] * 1e3:>7.1f}ms {median['t_objective']:>9.2f}s {overhead:>8.1%} {in_trial:>8.1%} {rate:>10.1f}"
        )
    print(
        "overhead: 1 - (time in the objective) / (worker-seconds from the first trial's start to the search's end), so it "
        "includes Ray Tune's scheduling, result reporting and the driver's records; in-trial: sample + lower + build as a "
        "share of each trial's own time. Startup (Ray, the feasibility probe) and the report are not counted."
    )


if __name__ == "__main__":
    main()
