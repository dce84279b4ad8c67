"""One `score_pool` run for `tests/test_beam.py`'s slow multi-process tests, in a process of its own.

    python beam_driver.py MODEL_DIR POOL OUTPUT_DIR --pids DIR [--die-on ID --marker FILE] [--portable] FLAGS

Scores POOL with the recommended queue rule (the default `--selection`, choosing `--top-k` among
`--candidates-factor * --top-k` candidates) on the runner FLAGS name. Every scoring batch leaves a file named
after its worker's pid in `--pids`. With `--die-on ID`, the worker that first gets the item ID in a batch
creates `--marker` and kills itself with SIGKILL mid-bundle; with the marker present nobody dies (a retry
or a rerun succeeds). With `--portable`, a local Beam job service (the Python SDK's, no network) is
started here and FLAGS go to a `PortableRunner` submitting to it. Prints the summary as JSON.
"""

import argparse
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from keras_lossal.beam import LossalModelHandler, ScorePool, WriteScorePool  # noqa: E402


class DyingHandler(LossalModelHandler):
    """Scores like `LossalModelHandler`; the first worker to see `die_on` (no marker yet) is killed mid-bundle."""

    def __init__(self, handler: LossalModelHandler, max_batch_size: int, die_on: str | None, marker: str | None,
                 pids: str):  # fmt: skip
        super().__init__(handler.version_dir, max_batch_size=max_batch_size, keep=handler.keep)
        self.die_on, self.marker, self.pids = die_on, marker, pids

    def run_inference(self, batch, model, inference_args=None):
        with open(os.path.join(self.pids, str(os.getpid())), "a") as handle:
            handle.write(f"{len(batch)}\n")
        if self.die_on in {pool_item["id"] for pool_item in batch} and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run_inference(batch, model, inference_args)


def portable_flags(flags: list[str]) -> list[str]:
    """Starts the Python SDK's local job service in this process; the flags that submit to it."""
    from apache_beam.runners.portability import local_job_service

    port = local_job_service.LocalJobServicer().start_grpc_server(0)
    return ["--runner=PortableRunner", f"--job_endpoint=localhost:{port}", *flags]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("pool")
    parser.add_argument("output")
    parser.add_argument("--pids", required=True)
    parser.add_argument("--die-on")
    parser.add_argument("--marker")
    parser.add_argument("--portable", action="store_true")
    parser.add_argument("--top-k", type=int, default=7)
    parser.add_argument("--candidates-factor", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=5)
    args, flags = parser.parse_known_args(argv)  # the flags this script does not know are Beam's
    flags = portable_flags(flags) if args.portable else flags
    transform = ScorePool(args.pool, args.model, top_k=args.top_k, max_batch_size=args.max_batch_size,
                          candidates_factor=args.candidates_factor)  # fmt: skip
    # The pipeline `score_pool` builds, with the handler swapped before `expand` wraps it in RunInference.
    transform.handler = DyingHandler(transform.handler, args.max_batch_size, args.die_on, args.marker, args.pids)
    pipeline = beam.Pipeline(options=PipelineOptions(flags))
    _ = pipeline | "ScorePool" >> transform | "Write" >> WriteScorePool(args.output)
    state = pipeline.run().wait_until_finish()
    print(json.dumps({"state": str(state), "pid": os.getpid()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
