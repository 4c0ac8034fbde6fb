"""Evaluation: datasets, suites, metrics, a resumable runner and baseline comparison.

::

    from trellis import Trellis
    from trellis.evals import EvalRunner, EvalStore, LabelQueues, load_suite, resolve_dataset

    suite, base = load_suite("examples/evals/suite.yaml")
    async with Trellis() as trellis:
        store = EvalStore(trellis.db)
        dataset = await resolve_dataset(suite.dataset, base, store)
        runner = EvalRunner(
            trellis.gateway, store, embedder=trellis.minilm, workflows=trellis.workflows
        )
        report = await runner.run(suite, dataset)
        # People label the outputs; the labels calibrate the judge and become a dataset.
        queue = await LabelQueues(trellis.db).from_run(report["run_id"])
"""

from trellis.evals.compare import Comparison, Threshold, compare_reports, parse_threshold
from trellis.evals.datasets import Case, Dataset, DatasetError, load_dataset, parse_dataset
from trellis.evals.html import render_compare, render_run
from trellis.evals.labels import LabelQueues
from trellis.evals.metrics import METRICS, Metric, build_metric
from trellis.evals.runner import EvalRunner, build_request, resolve_dataset
from trellis.evals.store import EvalStore
from trellis.evals.suite import Candidate, Suite, SuiteError, load_suite, parse_suite

__all__ = [
    "Case",
    "Candidate",
    "Comparison",
    "Dataset",
    "DatasetError",
    "EvalRunner",
    "EvalStore",
    "LabelQueues",
    "METRICS",
    "Metric",
    "Suite",
    "SuiteError",
    "Threshold",
    "build_metric",
    "build_request",
    "compare_reports",
    "load_dataset",
    "load_suite",
    "parse_dataset",
    "parse_suite",
    "parse_threshold",
    "render_compare",
    "render_run",
    "resolve_dataset",
]
