"""The tracing privacy setting applied to the step log: what a stored step record keeps.

``tracing.bodies`` says what stored traces keep of prompts and answers; a workflow's step
log holds the same kind of data (step outputs, the state after each step, error messages,
span attributes and events), and the run's trace is rebuilt from it. So the same setting
applies here, with the redactor traces use:

- ``full``: everything as produced.
- ``redacted``: every string in outputs, states, attributes, events and error messages has
  its PII and secrets replaced by placeholders (``[EMAIL]``...).
- ``none``: outputs and states are left out of the log (``null``), and the body attributes
  traces leave out (``trellis.retrieval.query``...) too; error messages and events stay,
  redacted (an exception's message often quotes the input), and so do the numbers.

The run's own current state (``workflow_runs.state``) is kept intact while the run can go
on: it is what a resume or a recovery continues from. Once a run succeeds or fails in a
step the mode applies to its final state as well (``none`` stores ``{}``). The run's
``input`` and ``output`` are kept: the caller asked for them.
"""

from __future__ import annotations

from typing import Any, Literal

from trellis.guard.redact import redact
from trellis.observe.writer import BODY_ATTRIBUTES
from trellis.orchestration.records import StepRecord

__all__ = ["BodiesMode", "StepPrivacy", "redact_json"]

BodiesMode = Literal["full", "redacted", "none"]


def redact_json(value: Any) -> Any:
    """A copy of a JSON value with every string redacted (keys are left as they are)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(item) for item in value]
    return value


class StepPrivacy:
    """Applies one ``bodies`` mode to step records before they are checkpointed."""

    def __init__(self, bodies: BodiesMode = "full") -> None:
        self.bodies = bodies

    def final_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """What a finished run keeps of its state (nothing resumes from it any more)."""
        if self.bodies == "none":
            return {}
        if self.bodies == "redacted":
            return redact_json(state)  # type: ignore[no-any-return]
        return state

    def apply(self, record: StepRecord) -> StepRecord:
        """``record`` with what the mode keeps (changed in place, and returned)."""
        if self.bodies == "full":
            return record
        if self.bodies == "none":
            record.output = None
            record.state = None
            if record.attributes:
                kept = {k: v for k, v in record.attributes.items() if k not in BODY_ATTRIBUTES}
                record.attributes = kept or None
            record.events = redact_json(record.events)
            record.error = redact_json(record.error)
            return record
        record.output = redact_json(record.output)
        record.state = redact_json(record.state)
        record.attributes = redact_json(record.attributes)
        record.events = redact_json(record.events)
        record.error = redact_json(record.error)
        return record
