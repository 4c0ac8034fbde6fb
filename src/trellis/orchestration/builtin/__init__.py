"""Workflows Trellis ships, each a ``Workflow`` importable by path and working offline on
the bundled models (every model alias is a state field defaulting to ``local``):

- ``trellis.orchestration.builtin.support_answer:workflow`` (``support-answer``)
- ``trellis.orchestration.builtin.extract:workflow`` (``extract``)
- ``trellis.orchestration.builtin.cascade:workflow`` (``cascade``)
"""
