"""A `triage` run that `tests/test_triage.py` kills with SIGKILL mid-run, then resumes in its own process.

    python triage_kill_driver.py MODEL_DIR POOL_DIR OUTPUT_DIR --delay 0.2 --commit-seconds 0.5

Scores `POOL_DIR` in-process with every scoring call slowed by `--delay` seconds, so the run lasts long
enough to be killed between two commits; after every batch it prints `progress SCORED FAILED` (what is
scored in memory, committed or not), flushed, so the test knows when records wait unwritten.
"""

import argparse
import importlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_lossal.contracts import SCORER_ATTRIBUTES  # noqa: E402
from keras_lossal.serving import InProcessScorer, read_items  # noqa: E402

# The module, not the function `keras_lossal.serving` exports under the same name.
triage_module = importlib.import_module("keras_lossal.serving.triage")


class SlowScorer:
    """The in-process scorer, each call `delay` seconds slower (the same scores)."""

    def __init__(self, scorer: InProcessScorer, delay: float):
        self.scorer, self.delay = scorer, delay
        for name in SCORER_ATTRIBUTES:
            setattr(self, name, getattr(scorer, name))

    def score(self, kind, payloads):
        time.sleep(self.delay)
        return self.scorer.score(kind, payloads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("pool")
    parser.add_argument("output")
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--commit-seconds", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--read-threads", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)

    def progress(scored: int, failed: int) -> None:
        print(f"progress {scored} {failed}", flush=True)

    triage_module.triage(
        read_items(args.pool),
        SlowScorer(InProcessScorer(args.model), args.delay),
        args.output,
        top_k=args.top_k,
        batch_size=args.batch_size,
        read_threads=args.read_threads,
        commit_seconds=args.commit_seconds,
        progress=progress,
    )
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
