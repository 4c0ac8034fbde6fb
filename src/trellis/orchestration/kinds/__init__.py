"""The step kinds: ``llm``, ``gate`` (with its checks), ``retrieve``, ``truncate``, and
``remember``/``recall`` (long-term memory).

Each kind is a :class:`~trellis.orchestration.steps.Step` subclass built by a lowercase
factory (``llm(...)``, ``gate(...)``); the public names are re-exported by
``trellis.orchestration``.
"""
