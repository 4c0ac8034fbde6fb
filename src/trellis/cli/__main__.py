"""``python -m trellis.cli``: the same command as the ``trellis`` script."""

from trellis.cli import app

app()
