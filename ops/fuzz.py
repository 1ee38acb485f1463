"""Fuzz the handler in process with thousands of Hypothesis cases and print the figures (`make fuzz`).

    python -m ops.fuzz                       # 350 batches per strategy (about 5,500 fuzzed requests)
    python -m ops.fuzz --batches 50 --seed 3

It exports a tiny random model to a temporary folder, loads the handler on it
with a real TorchServe `Context`, and runs every strategy of
`ops.fuzzing.request_strategies` as batches mixing fuzzed and valid requests
(`ops.fuzzing.in_process`). It prints one JSON object: requests per strategy,
the statuses they got, time, and the first problems found (a progress bar goes to
stderr, so stdout is the report alone); it exits 1 when any
request broke the property. The test suite runs the same checks on a few
hundred cases (tests/test_fuzz_handler.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from hypothesis import given, seed, settings
from tqdm import tqdm

from bench.environment import cpu_model

from ops.fuzzing.in_process import InProcessService, batches, check_batch
from ops.fuzzing.profiles import FUZZ
from ops.fuzzing.request_strategies import STRATEGIES
from ops.tiny_model import write_tiny_export
from training.cli import positive_int


def run_strategy(service: InProcessService, name: str, count: int, random_seed: int, figures: dict,
                 progress: tqdm) -> None:
    """Run `count` batches of strategy `name`; a property failure is recorded, not raised."""
    statuses: Counter = figures["statuses"][name]
    progress.set_postfix_str(name)

    @seed(random_seed)
    @settings(FUZZ, max_examples=count)
    @given(batches(STRATEGIES[name]))
    def fuzz(batch):
        result = check_batch(service, batch)
        figures["batches"][name] += 1
        progress.update()
        for strategy, answer in result.answers:
            (statuses if strategy != "valid" else figures["statuses"]["valid"])[answer.status] += 1
        assert not result.problems, "\n".join(result.problems)

    try:
        fuzz()
    except Exception as error:  # noqa: BLE001 - Hypothesis re-raises the shrunk failure
        figures["failures"].append({"strategy": name, "problem": str(error)[:2000]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=positive_int, default=350, help="batches per strategy (each 1-5 fuzzed requests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=sorted(STRATEGIES), choices=sorted(STRATEGIES),
                        help="strategies to run (default: all)")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # TorchServe's reader logs a traceback for each mistyped body

    figures = {"batches": Counter(), "statuses": defaultdict(Counter), "failures": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        service = InProcessService(write_tiny_export(Path(folder) / "export", seed=1, image_size=16))
        # On stderr, so that stdout stays the one JSON report. Hypothesis may run a few batches more
        # (shrinking a failure) or fewer (a strategy with few distinct cases) than asked.
        with tqdm(total=args.batches * len(args.strategies), desc="fuzzing", unit="batch") as progress:
            for name in args.strategies:
                run_strategy(service, name, args.batches, args.seed, figures, progress)
        service.close()
    elapsed = time.perf_counter() - started

    fuzzed = {name: sum(figures["statuses"][name].values()) for name in args.strategies}
    report = {
        "seed": args.seed,
        "cpu": cpu_model(),
        "batches": dict(figures["batches"]),
        "fuzzed_requests": fuzzed,
        "fuzzed_requests_total": sum(fuzzed.values()),
        "valid_requests_alongside": sum(figures["statuses"]["valid"].values()),
        "statuses": {name: dict(sorted(c.items())) for name, c in figures["statuses"].items()},
        "failures": len(figures["failures"]),
        "first_failures": figures["failures"][:5],
        "seconds": round(elapsed, 1),
    }
    print(json.dumps(report, indent=2))
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
