"""English function words dropped from keyword queries.

They carry almost no relevance signal, and with OR-matching each one would pull
thousands of chunks into BM25 scoring; dropping them keeps keyword search fast.
They stay in the index itself, so phrase-like queries of stop words still match.
"""

from __future__ import annotations

__all__ = ["ENGLISH_STOPWORDS"]

_WORDS = """
    a about above after again against all am an and any are aren't as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn
    doing don down during each few for from further had hadn has hasn have haven having he
    her here hers herself him himself his how i if in into is isn it its itself just me
    more most must mustn my myself no nor not now of off on once only or other ought our
    ours ourselves out over own same shan she should shouldn so some such than that the
    their theirs them themselves then there these they this those through to too under
    until up very was wasn we were weren what when where which while who whom why will
    with won would wouldn you your yours yourself yourselves also may might shall upon
    whether within without yet s t d ll m o re ve y
"""

ENGLISH_STOPWORDS: frozenset[str] = frozenset(_WORDS.split())
