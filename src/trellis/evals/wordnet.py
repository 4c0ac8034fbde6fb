"""WordNet for METEOR, offline: the Princeton WordNet 3.0 database files a system package
installs (Debian/Ubuntu ``wordnet-base`` puts them in ``/usr/share/wordnet``), read by
nltk's own ``WordNetCorpusReader``. Nothing is downloaded at run time.

Debian's files lack ``lexnames`` (the 45 lexicographer file names, fixed since WordNet
1.5); the reader needs it to start, so it is supplied here. ``TRELLIS_WORDNET_DIR`` points
at another copy of the database (any folder with ``data.noun``, ``index.noun``...).
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["WordNetMissingError", "wordnet", "wordnet_dir"]

#: Where ``wordnet-base`` installs WordNet 3.0, then nltk's own data folder.
SEARCH = ("/usr/share/wordnet", "/usr/share/nltk_data/corpora/wordnet")

_LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]  # fmt: skip
_SYNTACTIC_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
LEXNAMES = "".join(
    f"{number:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
    for number, name in enumerate(_LEXNAMES)
)


class WordNetMissingError(RuntimeError):
    """No WordNet database on this machine (METEOR needs one)."""


def wordnet_dir() -> Path:
    """The folder holding the WordNet database files; raises if there is none."""
    candidates = (
        [os.environ["TRELLIS_WORDNET_DIR"]] if os.environ.get("TRELLIS_WORDNET_DIR") else []
    )
    for folder in (*candidates, *SEARCH):
        if (Path(folder) / "data.noun").is_file() and (Path(folder) / "index.noun").is_file():
            return Path(folder)
    raise WordNetMissingError(
        "METEOR needs the WordNet 3.0 database: install it with `apt-get install wordnet-base` "
        "(Debian/Ubuntu) or point TRELLIS_WORDNET_DIR at a folder with data.noun and index.noun"
    )


@functools.cache
def wordnet() -> Any:
    """nltk's ``WordNetCorpusReader`` over the local database (built once per process)."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_dir()
    # nltk reads corpora only under its data roots: make the database folder one of them.
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    has_lexnames = (root / "lexnames").is_file()

    class _Reader(WordNetCorpusReader):  # type: ignore[misc]
        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not has_lexnames:
                return io.StringIO(LEXNAMES)
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            # nltk maps other versions' synsets onto 3.0 (for multilingual data); this
            # database is 3.0, and there is no other to map from.
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": as meant
        warnings.simplefilter("ignore", UserWarning)
        return _Reader(str(root), None)
