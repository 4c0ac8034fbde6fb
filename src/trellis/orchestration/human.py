"""Human input: the run pauses durably (status ``waiting``) until ``resume`` brings the input."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from trellis.orchestration.context import Context
from trellis.orchestration.steps import Next, Outcome, Pause, Step

__all__ = ["HumanStep", "human"]


class HumanStep(Step):
    """Waits for input of type ``input`` (a pydantic model or any type pydantic validates);
    the validated input goes into the state field ``into``, then the run continues."""

    kind = "human"

    def __init__(
        self,
        name: str,
        *,
        into: str,
        input: Any = dict[str, Any],
        prompt: str = "",
        next: Next | None = None,
    ) -> None:
        super().__init__(name, next=next)
        self.into = into
        self.prompt = prompt
        self.adapter: TypeAdapter[Any] = TypeAdapter(input)

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        return Outcome(
            pause=Pause(into=self.into, prompt=self.prompt, schema=self.adapter.json_schema())
        )

    def validate_input(self, value: Any) -> Any:
        """The input, validated, as JSON data (raises pydantic's ValidationError if invalid);
        the state field ``into`` validates it again into its own type."""
        return self.adapter.dump_python(self.adapter.validate_python(value), mode="json")


def human(
    name: str, *, into: str, input: Any = dict[str, Any], prompt: str = "", next: Next | None = None
) -> HumanStep:
    return HumanStep(name, into=into, input=input, prompt=prompt, next=next)
