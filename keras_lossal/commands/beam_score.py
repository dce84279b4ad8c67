"""`lossal beam-score`: score an unlabeled pool on Apache Beam (any runner) and write the labeling queue.

The queue is chosen as `lossal triage` chooses it (`--selection`, default budget_switch: typiclust while fewer
than --labels-per-class labels per class are labeled, badge from there). Beam has no labeled-set manifests, so
the export's training record counts the labels (a model exported without one: badge), and typiclust counts
every cluster as uncovered. The summary names the selection used and why.

Flags this command does not know are Beam pipeline options and go to the
runner unchanged, so the same command runs on a laptop and on a cluster:

    lossal beam-score --model models/lossal --input 'pool/**.png' --output out --top-k 1000
    lossal beam-score --model gs://b/models/lossal --input 'gs://b/pool-*.tfrecord' --output gs://b/out \\
        --runner DataflowRunner --project P --region europe-west1 --temp_location gs://b/tmp \\
        --requirements_file requirements.txt
"""

from __future__ import annotations

import argparse
import json

from keras_lossal.commands import _settings
from keras_lossal.commands._errors import CommandError, reports_errors
from keras_lossal.commands._settings import add_image_limit_arguments, add_selection_arguments


class _PipelineOptionsParser(argparse.ArgumentParser):
    """Keeps unknown flags as `args.pipeline_args` (Beam options) instead of rejecting them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.pipeline_args = list(getattr(namespace, "pipeline_args", None) or []) + list(extras)
        return namespace, []


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "beam-score",
        help="score a pool on Apache Beam (DirectRunner, Flink, Spark, Dataflow) and write the top-K queue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # argparse builds subparsers with the parent's class; this one must pass unknown flags through.
    parser.__class__ = _PipelineOptionsParser
    parser.add_argument("--model", required=True, help="export_for_serving base path or version directory")
    parser.add_argument(
        "--input", required=True, help="image folder or glob, TFRecord file/glob of tf.Example, or JSONL manifest(s)"
    )
    parser.add_argument("--output", required=True, help="output folder (local or object storage)")
    parser.add_argument("--input-type", default="auto", choices=["auto", "images", "tfrecord", "manifest"])
    parser.add_argument("--top-k", type=int, default=1000, help="queue length (default: 1000)")
    add_selection_arguments(parser)
    parser.add_argument("--version", type=int, default=None, help="export version (default: the highest)")
    parser.add_argument("--min-batch-size", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--root", default=None, help="manifests: folder relative paths must stay inside")
    add_image_limit_arguments(parser)
    parser.add_argument("--large-model", action="store_true", help="one model copy per machine, shared")
    parser.add_argument("--runner", default="DirectRunner", help="Beam runner (default: DirectRunner)")
    parser.set_defaults(func=run, pipeline_args=[])
    return parser


@reports_errors("beam-score")
def run(args: argparse.Namespace) -> int:
    try:
        from keras_lossal.beam import score_pool
    except ImportError as error:  # the optional dependency is missing; the message names the extra
        raise CommandError(str(error)) from None
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(["--runner", args.runner, *args.pipeline_args])
    summary = score_pool(
        args.input,
        args.model,
        args.output,
        _settings.settings(args, args.top_k),
        pipeline_options=options,
        input_type=args.input_type,
        version=args.version,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        root=args.root,
        large_model=args.large_model,
    )
    print(json.dumps(summary, indent=2))
    return 0
