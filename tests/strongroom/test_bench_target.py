"""`make bench` runs every benchmark script in benchmarks/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench_recipe() -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match is not None, "Makefile has no bench target"
    return match.group(1)


def test_make_bench_runs_every_benchmark_script() -> None:
    recipe = _bench_recipe()
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*_bench.py"))
    assert scripts, "no benchmarks found"
    missing = [name for name in scripts if f"benchmarks/{name}" not in recipe]
    assert missing == [], f"make bench does not run {missing}"
