"""Alembic migrations for Trellis' tables, run programmatically by :class:`trellis.store.Database`.

Forward-only: each revision in ``versions/`` is named ``NNNN_what`` and never edited once
released. To add one, copy the latest file, bump the number, set ``down_revision``.
"""
