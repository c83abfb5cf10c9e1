"""Long-run simulation: explore many seeds and report steps/s and seeds explored.

    python benchmarks/simulation_bench.py [--seed 1000] [--seeds 20] [--steps 500] [--faults default]
                                          [--minutes 0]

Runs ``strongroom simulate``'s engine (strongroom/simulation) seed after seed
(stopping early after ``--minutes`` if given), prints one JSON line per seed and
a summary: seeds explored, steps run, steps/s (wall and CPU), and the seeds
that failed with their first violated invariant. Failing seeds are not shrunk
here; reproduce one with ``strongroom simulate --seed N --steps K``.
"""

from __future__ import annotations

import argparse
import json
import time

from strongroom.commands.simulate import _faults
from strongroom.simulation import runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--faults", default="default")
    parser.add_argument("--minutes", type=float, default=0.0, help="Stop starting new seeds after this long.")
    args = parser.parse_args()
    faults = _faults(args.faults)
    started, cpu_started = time.perf_counter(), time.process_time()
    steps = explored = 0
    failures: dict[int, str] = {}
    for seed in range(args.seed, args.seed + args.seeds):
        if args.minutes and time.perf_counter() - started > args.minutes * 60:
            break
        result = runner.run(seed, args.steps, faults)
        explored += 1
        steps += len(result.trace)
        summary = result.summary()
        summary.pop("trace_tail", None)
        print(json.dumps(summary), flush=True)
        if result.failure is not None:
            failures[seed] = result.failure.violations[0].name
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(json.dumps({"seeds_explored": explored, "steps": steps, "wall_s": round(wall, 1),
                      "cpu_s": round(cpu, 1), "steps_per_s_wall": round(steps / wall, 1),
                      "steps_per_s_cpu": round(steps / cpu, 1) if cpu else None,
                      "failed_seeds": failures}))


if __name__ == "__main__":
    main()
