"""Runs a suite: every (case, candidate, repeat) through the gateway in process, at most
``concurrency`` at once, each result stored as soon as it is scored.

Resumable: a run's results are keyed by case, candidate and repeat, so running the same
``run_id`` again (after a crash or kill) skips what finished and redoes only the rest
(failed units are tried again). Each result carries the trace id of its call, the latency
the caller saw, the tokens the provider reported and the cost the gateway's bookkeeping
computed for that trace (its price table).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trellis.errors import ConflictError, InvalidRequestError, NotFoundError, TrellisError
from trellis.evals.corpus import CORPUS_METRICS, sentence_stats
from trellis.evals.datasets import Case, Dataset, load_dataset
from trellis.evals.metrics import Metric, build_metrics
from trellis.evals.pairwise import judge_pair, pair_key
from trellis.evals.report import build_report
from trellis.evals.store import EvalStore, ResultKey
from trellis.evals.suite import Candidate, Suite, render
from trellis.inference.gateway import Caller, Gateway
from trellis.observe.tracing import Trace
from trellis.schema import ChatRequest

if TYPE_CHECKING:
    from trellis.orchestration.service import Workflows

__all__ = ["EvalRunner", "Progress", "build_request", "resolve_dataset"]

#: ``progress(done, total)`` after each finished unit (and once at the start).
Progress = Callable[[int, int], None]

#: How long to wait for a deferred trace's cost after its answer arrived.
_COST_WAIT_SECONDS = 5.0


def build_request(candidate: Candidate, case: Case) -> ChatRequest:
    """The chat request a candidate sends for a case (template over the case's fields)."""
    values = case.fields()
    messages: list[dict[str, Any]] = []
    if candidate.system is not None:
        messages.append({"role": "system", "content": render(candidate.system, values)})
    if isinstance(case.input, list) and candidate.prompt == "{input}":
        messages.extend(case.input)  # a conversation, sent as it is
    else:
        messages.append({"role": "user", "content": render(candidate.prompt, values)})
    # Repeats must reach the model: evals never answer from the response cache.
    options: dict[str, Any] = {"cache": False, "semantic_cache": False}
    if candidate.collections is not None:
        options["collections"] = candidate.collections
    if candidate.model is None:
        raise ValueError(f"candidate {candidate.name!r} runs a workflow, not a model")
    body = {**candidate.params, "model": candidate.model, "messages": messages}
    body["trellis"] = {**options, **dict(body.get("trellis") or {})}
    return ChatRequest.model_validate(body)


async def resolve_dataset(ref: str, base: Path, store: EvalStore) -> Dataset:
    """A suite's dataset: a JSONL/CSV file (relative to ``base``) or a stored ``name@version``."""
    path = Path(ref) if Path(ref).is_absolute() else base / ref
    if path.suffix.lower() in (".jsonl", ".csv", ".json") or path.exists():
        return load_dataset(path)
    return await store.dataset(ref)


class _ResultWriter:
    """Stores finished units in batches: what finishes while one write is in flight goes
    into the next, so a run makes one transaction per batch, not per case. A kill loses
    at most the units of the batch being gathered (they are redone on resume)."""

    def __init__(self, store: EvalStore, run_id: str, replace: set[ResultKey]) -> None:
        self.store = store
        self.run_id = run_id
        self.replace = replace
        self.pending: list[tuple[ResultKey, dict[str, Any]]] = []
        self.wake = asyncio.Event()
        self.closing = False
        self.task = asyncio.create_task(self._loop())

    def add(self, key: ResultKey, result: dict[str, Any]) -> None:
        if self.task.done():
            self.task.result()  # a failed write fails the run now
        self.pending.append((key, result))
        self.wake.set()

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, []
            await self.store.add_results(self.run_id, batch, replace=self.replace)
            if self.closing and not self.pending:
                return

    async def close(self) -> None:
        """Write what is pending and stop."""
        self.closing = True
        self.wake.set()
        await self.task


class _Costs:
    """Cost and tokens of recent traces, from the gateway's ``on_trace`` hook."""

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self.seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def __call__(self, trace: Trace) -> None:
        summary = dict(trace.summary)
        waiter = self.waiters.pop(trace.trace_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(summary)
            return
        self.seen[trace.trace_id] = summary
        while len(self.seen) > self.limit:
            self.seen.popitem(last=False)

    async def get(self, trace_id: str) -> dict[str, Any]:
        summary = self.seen.pop(trace_id, None)
        if summary is not None:
            return summary
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[trace_id] = waiter
        try:
            return await asyncio.wait_for(waiter, _COST_WAIT_SECONDS)
        except TimeoutError:
            return {}
        finally:
            self.waiters.pop(trace_id, None)


#: The caller of the run this task belongs to (set by :meth:`EvalRunner.run`).
_RUN_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "trellis_eval_run_caller", default=None
)


class EvalRunner:
    """Runs suites through one gateway, storing results in an :class:`EvalStore`."""

    def __init__(
        self,
        gateway: Gateway,
        store: EvalStore,
        *,
        embedder: Any = None,
        caller: Caller | None = None,
        workflows: Workflows | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = store
        #: Where workflow candidates run (a runtime's ``Workflows``).
        self.workflows = workflows
        #: For the cosine metric (the bundled MiniLM); loaded only if a suite asks for it.
        self.embedder = embedder
        self.caller = caller

    def _caller(self) -> Caller:
        """The caller of the run in progress: ``caller`` in the run's project, so its
        traces (and workflow runs) belong where the run does."""
        return _RUN_CALLER.get() or self.caller or Caller()

    def metrics(self, suite: Suite) -> list[Metric]:
        metrics = build_metrics(suite.metrics)
        for metric in metrics:
            if metric.needs_embedder:
                if self.embedder is None:
                    raise InvalidRequestError(f"metric {metric.name!r} needs the bundled embedder")
                metric.embedder = self.embedder  # type: ignore[attr-defined]
        return metrics

    async def start(
        self,
        suite: Suite,
        dataset: Dataset,
        run_id: str | None = None,
        *,
        key_id: str | None = None,
        schedule: str | None = None,
        project_id: str = "default",
    ) -> str:
        """Register a run (or find the existing ``run_id``) and return its id; ``schedule``
        tags a run a schedule made."""
        for candidate in suite.candidates:
            if candidate.workflow is None:
                continue
            if self.workflows is None:
                raise InvalidRequestError(
                    f"candidate {candidate.name!r} runs a workflow: this runner has none "
                    "(give EvalRunner the runtime's workflows)",
                    param="candidates",
                )
            if candidate.workflow not in self.workflows.names:
                raise InvalidRequestError(
                    f"candidate {candidate.name!r}: no workflow named {candidate.workflow!r} "
                    f"is registered (registered: {sorted(self.workflows.names)})",
                    param="candidates",
                )
        total = _units(suite, dataset)
        if run_id is not None:
            try:
                record = await self.store.run(run_id)
            except NotFoundError:
                pass
            else:
                if record.dataset != dataset.ref:
                    raise ConflictError(
                        f"run {run_id} evaluates {record.dataset}, not {dataset.ref}: "
                        "a resumed run keeps its dataset",
                        param="run_id",
                    )
                return run_id
        run_id = run_id or uuid.uuid4().hex
        await self.store.save_dataset(dataset, project_id)
        await self.store.create_run(
            run_id,
            suite.model_dump(mode="json"),
            dataset.ref,
            total,
            key_id=key_id,
            schedule=schedule,
            project_id=project_id,
        )
        return run_id

    async def run(
        self,
        suite: Suite,
        dataset: Dataset,
        *,
        run_id: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) ``suite`` over ``dataset``; the JSON report when all is done."""
        metrics = self.metrics(suite)
        run_id = await self.start(suite, dataset, run_id)
        project_id = (await self.store.run(run_id)).project_id
        base = self.caller or Caller()
        token = _RUN_CALLER.set(dataclasses.replace(base, project_id=project_id))
        try:
            return await self._run(suite, dataset, run_id, metrics, progress)
        finally:
            _RUN_CALLER.reset(token)

    async def _run(
        self,
        suite: Suite,
        dataset: Dataset,
        run_id: str,
        metrics: list[Metric],
        progress: Progress | None,
    ) -> dict[str, Any]:
        results = await self.store.results(run_id)
        todo = [
            (case, candidate, repeat)
            for case in dataset.cases
            for candidate in suite.candidates
            for repeat in range(suite.repeats)
            if (results.get((case.id, candidate.name, repeat)) or {"error": True}).get("error")
        ]
        pairs = [
            (index, case, repeat)
            for index in range(len(suite.pairwise))
            for case in dataset.cases
            for repeat in range(suite.repeats)
            if (results.get((case.id, pair_key(index), repeat)) or {"error": True}).get("error")
        ]
        total = _units(suite, dataset)
        done = total - len(todo) - len(pairs)
        if progress is not None:
            progress(done, total)
        costs = _Costs()
        self.gateway.on_trace.append(costs)
        limit = asyncio.Semaphore(suite.concurrency)
        writer = _ResultWriter(self.store, run_id, {key for key in results})

        async def one(case: Case, candidate: Candidate, repeat: int) -> None:
            nonlocal done
            async with limit:
                result = await self._unit(case, candidate, metrics, costs)
            key: ResultKey = (case.id, candidate.name, repeat)
            writer.add(key, result)
            results[key] = result
            done += 1
            if progress is not None:
                progress(done, total)

        async def compare(index: int, case: Case, repeat: int) -> None:
            nonlocal done
            spec = suite.pairwise[index]
            a = results.get((case.id, spec.a, repeat)) or {}
            b = results.get((case.id, spec.b, repeat)) or {}
            verdict: dict[str, Any]
            if not a or not b or a.get("error") is not None or b.get("error") is not None:
                # Nothing to compare; stored as failed, so a resume tries again.
                verdict = {"outcome": None, "error": "a candidate has no output for this case"}
            else:
                async with limit:
                    verdict = await judge_pair(
                        self.gateway, spec, case, a["output"], b["output"], self._caller()
                    )
            key: ResultKey = (case.id, pair_key(index), repeat)
            writer.add(key, verdict)
            results[key] = verdict
            done += 1
            if progress is not None:
                progress(done, total)

        try:
            await asyncio.gather(*(one(*unit) for unit in todo))
            # Pairwise judging needs both candidates' outputs: after the runs.
            await asyncio.gather(*(compare(*pair) for pair in pairs))
            await writer.close()
        except BaseException as exc:
            writer.task.cancel()
            if not isinstance(exc, asyncio.CancelledError):
                await self.store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.gateway.on_trace.remove(costs)
        await self.store.set_status(run_id, "succeeded")
        return build_report(run_id, suite, dataset, metrics, results)

    async def _unit(
        self, case: Case, candidate: Candidate, metrics: list[Metric], costs: _Costs
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "output": None,
            "metrics": {},
            "latency_ms": None,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost": 0.0,
            "trace_id": None,
            "model": None,
            "error": None,
        }
        if candidate.workflow is not None:
            return await self._workflow_unit(case, candidate, metrics, result)
        try:
            request = build_request(candidate, case)
        except (KeyError, ValueError) as exc:
            result["error"] = f"request: {exc}"
            return result
        started = time.perf_counter()
        try:
            answer = await self.gateway.chat(request, self._caller())
        except TrellisError as exc:
            result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            result["error"] = f"{type(exc).__name__}: {exc.message}"
            return result
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        response = answer.response
        output = (response.choices[0].message.content or "") if response.choices else ""
        # A grounded answer's sources, in rank order (what the RAG metrics score).
        citations = getattr(response, "citations", None)
        retrieved = (
            [str(c.get("document_id")) for c in citations if isinstance(c, dict)]
            if isinstance(citations, list)
            else None
        )
        passages = (
            [str(c.get("snippet") or "") for c in citations if isinstance(c, dict)]
            if isinstance(citations, list)
            else None
        )
        if retrieved is not None:
            result["retrieved_ids"] = retrieved
        summary = await costs.get(answer.trace_id)
        usage = response.usage
        result.update(
            output=output,
            trace_id=answer.trace_id,
            model=response.model,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            cost=float(summary.get("cost") or 0.0),
        )
        await self._measure(result, metrics, output, case, retrieved, passages)
        return result

    async def _measure(
        self,
        result: dict[str, Any],
        metrics: list[Metric],
        output: str,
        case: Case,
        retrieved: list[str] | None,
        passages: list[str] | None,
    ) -> None:
        """Score ``output`` with every metric into ``result["metrics"]``; ``retrieved`` and
        ``passages`` are a grounded answer's cited documents and their text (RAG metrics)."""
        local = [m for m in metrics if not getattr(m, "needs_gateway", False)]
        if all(metric.cheap for metric in local):
            result["metrics"] = _score(local, output, case, retrieved, passages)
        else:  # reference metrics and embeddings take milliseconds: off the event loop
            result["metrics"], stats = await asyncio.to_thread(
                _score_with_stats, local, output, case, retrieved, passages
            )
            if stats is not None:
                result["corpus_stats"] = stats
        for metric in metrics:
            if getattr(metric, "needs_gateway", False):  # LLM judges: a call of their own
                judge = metric.judge  # type: ignore[attr-defined]
                if getattr(metric, "needs_passages", False):  # RAG judges see what was found
                    value, verdict = await judge(
                        self.gateway,
                        output,
                        case,
                        self._caller(),
                        retrieved=retrieved,
                        passages=passages,
                    )
                else:
                    value, verdict = await judge(self.gateway, output, case, self._caller())
                result["metrics"][metric.name] = None if value is None else round(value, 6)
                result.setdefault("judgements", {})[metric.name] = verdict

    async def _workflow_unit(
        self, case: Case, candidate: Candidate, metrics: list[Metric], result: dict[str, Any]
    ) -> dict[str, Any]:
        """One case through a workflow run: its output, latency, tokens and cost are the
        run's (every step's model calls summed), its trace the run's trace."""
        assert self.workflows is not None and candidate.workflow is not None
        values = case.fields()
        try:
            run_input = {
                name: render(value, values) if isinstance(value, str) else value
                for name, value in (candidate.workflow_input or {}).items()
            }
        except (KeyError, ValueError) as exc:
            result["error"] = f"input: {exc}"
            return result
        started = time.perf_counter()
        try:
            caller = self._caller()
            run = await self.workflows.run(
                candidate.workflow, run_input, key_id=caller.key_id, project_id=caller.project_id
            )
        except TrellisError as exc:
            result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            result["error"] = f"{type(exc).__name__}: {exc.message}"
            return result
        result.update(
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            trace_id=run.trace_id,
            run_id=run.id,
            model=f"workflow:{run.workflow}",
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
            cost=float(run.cost),
        )
        if run.status != "succeeded":
            detail = (run.error or {}).get("message") or run.status
            result["error"] = f"workflow run {run.id} {run.status}: {detail}"
            return result
        output: Any = run.output
        if candidate.workflow_output is not None:
            if not isinstance(output, dict) or candidate.workflow_output not in output:
                result["error"] = f"the run's output has no field {candidate.workflow_output!r}"
                return result
            output = output[candidate.workflow_output]
        text = output if isinstance(output, str) else json.dumps(output, sort_keys=True)
        result["output"] = text
        await self._measure(result, metrics, text, case, None, None)
        return result

    async def report(self, run_id: str, suite: Suite, dataset: Dataset) -> dict[str, Any]:
        """The report of a stored run, finished or not."""
        record = await self.store.run(run_id)
        results = await self.store.results(run_id)
        return build_report(
            run_id, suite, dataset, self.metrics(suite), results, status=record.status
        )


def _units(suite: Suite, dataset: Dataset) -> int:
    """A run's units: one per (case, candidate, repeat) and per (case, pair, repeat)."""
    per_repeat = len(suite.candidates) + len(suite.pairwise)
    return len(dataset.cases) * per_repeat * suite.repeats


def _score(
    metrics: list[Metric],
    output: str,
    case: Case,
    retrieved: list[str] | None = None,
    passages: list[str] | None = None,
) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for metric in metrics:
        value = metric(output, case, retrieved, passages)
        values[metric.name] = None if value is None else round(value, 6)
    return values


def _score_with_stats(
    metrics: list[Metric],
    output: str,
    case: Case,
    retrieved: list[str] | None = None,
    passages: list[str] | None = None,
) -> tuple[dict[str, float | None], dict[str, list[int]] | None]:
    """The metric values and, when the suite scores BLEU or chrF and the case has a
    reference, the case's corpus BLEU/chrF sentence statistics, computed once: the bleu
    and chrf values come from them, and kept with the result, a report of 1,000 cases
    sums them instead of tokenising every output again."""
    corpus = [m for m in metrics if m.name in CORPUS_METRICS]
    if not corpus or case.expected is None:
        return _score(metrics, output, case, retrieved, passages), None
    stats = sentence_stats([output], [case.expected])[0]
    values = _score(
        [m for m in metrics if m.name not in CORPUS_METRICS], output, case, retrieved, passages
    )
    for metric in corpus:
        values[metric.name] = round(metric.from_stats(stats[metric.name]), 6)  # type: ignore[attr-defined]
    return {m.name: values[m.name] for m in metrics}, stats
