"""Metric values equal their reference libraries' on the same inputs (and published values)."""

from __future__ import annotations

import pytest
import sacrebleu
from nltk.translate.meteor_score import meteor_score
from rouge_score import rouge_scorer

from trellis.evals import Case, build_metric
from trellis.evals.wordnet import wordnet, wordnet_dir

HYPOTHESES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog",
    "It is raining heavily in the city today",
    "Completely unrelated words here",
]
REFERENCES = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumped over the lazy dogs",
    "Today it rains heavily in the city",
    "Nothing in common at all",
]


def cases() -> list[Case]:
    return [Case(id=str(i), input="q", expected=r) for i, r in enumerate(REFERENCES)]


def test_bleu_equals_sacrebleu_sentence_and_corpus() -> None:
    metric = build_metric("bleu")
    for hyp, case in zip(HYPOTHESES, cases(), strict=True):
        expected = sacrebleu.sentence_bleu(hyp, [case.expected or ""]).score / 100
        assert metric(hyp, case) == pytest.approx(expected, abs=1e-12)
    corpus = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score / 100
    assert metric.aggregate(HYPOTHESES, cases(), []) == pytest.approx(corpus, abs=1e-12)


def test_bleu_matches_sacrebleus_published_example() -> None:
    """sacrebleu's README example: corpus BLEU 48.53 on its two-reference test set."""
    refs = [
        ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
    ]
    sys = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    assert round(sacrebleu.corpus_bleu(sys, refs).score, 2) == 48.53
    # The per-case metric with two references is not in scope; one reference each:
    metric = build_metric("bleu")
    one_ref = [Case(id=str(i), input="q", expected=r) for i, r in enumerate(refs[0])]
    assert metric.aggregate(sys, one_ref, []) == pytest.approx(
        sacrebleu.corpus_bleu(sys, [refs[0]]).score / 100
    )


def test_chrf_equals_sacrebleu() -> None:
    metric = build_metric("chrf")
    for hyp, case in zip(HYPOTHESES, cases(), strict=True):
        expected = sacrebleu.sentence_chrf(hyp, [case.expected or ""]).score / 100
        assert metric(hyp, case) == pytest.approx(expected, abs=1e-12)
    corpus = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score / 100
    assert metric.aggregate(HYPOTHESES, cases(), []) == pytest.approx(corpus, abs=1e-12)


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL"])
def test_rouge_equals_rouge_score_with_stemming(kind: str) -> None:
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    metric = build_metric(kind)
    values = []
    for hyp, case in zip(HYPOTHESES, cases(), strict=True):
        expected = scorer.score(case.expected or "", hyp)[kind].fmeasure
        values.append(expected)
        assert metric(hyp, case) == pytest.approx(expected, abs=1e-12)
    # Stemming is on: "jumps"/"jumped" and "dog"/"dogs" match.
    assert metric("jumps dogs", Case(id="s", input="q", expected="jumped dog")) > 0
    assert metric.aggregate(HYPOTHESES, cases(), values) == pytest.approx(sum(values) / 4)


def test_meteor_equals_nltk_with_the_local_wordnet(wordnet_installed: None) -> None:
    metric = build_metric("meteor")
    for hyp, case in zip(HYPOTHESES, cases(), strict=True):
        expected = meteor_score([(case.expected or "").split()], hyp.split(), wordnet=wordnet())
        assert metric(hyp, case) == pytest.approx(expected, abs=1e-12)


def test_meteor_reproduces_nltks_published_value(wordnet_installed: None) -> None:
    """nltk's meteor_score docstring: 0.6944 for this pair (needs WordNet synonyms)."""
    hypothesis = (
        "It is a guide to action which ensures that the military always obeys the commands "
        "of the party"
    )
    reference = (
        "It is a guide to action that ensures that the military will forever heed Party commands"
    )
    value = build_metric("meteor")(hypothesis, Case(id="x", input="q", expected=reference))
    assert value is not None and round(value, 4) == 0.6944
    assert (wordnet_dir() / "data.noun").is_file()
    assert wordnet().synsets("dog")[0].lexname() == "noun.animal"


def test_reference_metrics_skip_cases_without_expected(wordnet_installed: None) -> None:
    case = Case(id="x", input="q")
    for name in ("bleu", "chrf", "rougeL", "meteor", "exact", "contains"):
        assert build_metric(name)("anything", case) is None
    assert build_metric("bleu").aggregate(["a"], [case], [None]) is None


def test_checks() -> None:
    case = Case(id="x", input="q", expected="Paris")
    assert build_metric("exact")(" Paris\n", case) == 1.0
    assert build_metric("exact")("paris", case) == 0.0
    assert build_metric("exact", {"ignore_case": True})("paris", case) == 1.0
    assert build_metric("contains")("It is Paris.", case) == 1.0
    assert build_metric("contains", {"ignore_case": True})("it is PARIS", case) == 1.0
    assert build_metric("contains", {"value": "is"})("It is", Case(id="y", input="q")) == 1.0
    with_city = Case(id="z", input="q", metadata={"city": "Rome"})
    assert build_metric("contains", {"field": "city"})("Rome it is", with_city) == 1.0
    assert build_metric("contains", {"field": "city"})("Paris", with_city) == 0.0
    assert build_metric("contains", {"field": "town"})("Rome", with_city) is None
    assert build_metric("regex", {"pattern": r"^\d+$"})("42", case) == 1.0
    assert build_metric("regex", {"pattern": r"^\d+$"})("4 2", case) == 0.0
    assert build_metric("json_valid")('{"a": 1}', case) == 1.0
    assert build_metric("json_valid")("{a: 1}", case) == 0.0
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    valid = build_metric("json_schema_valid", {"schema": schema})
    assert valid('{"a": 1}', case) == 1.0
    assert valid('{"a": "1"}', case) == 0.0
    assert valid("not json", case) == 0.0


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("blue", {}, "unknown metric 'blue'"),
        ("regex", {}, "needs a 'pattern'"),
        ("regex", {"pattern": "("}, "bad pattern"),
        ("json_schema_valid", {"schema": {"type": 5}}, "invalid schema"),
        ("bleu", {"tokenize": "zh"}, "metric 'bleu'"),
    ],
)
def test_bad_metric_specs_are_value_errors(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_metric(name, options)


def test_meteor_without_wordnet_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from trellis.evals import wordnet as module

    monkeypatch.setattr(module, "SEARCH", ())
    monkeypatch.setenv("TRELLIS_WORDNET_DIR", str(tmp_path))
    module.wordnet.cache_clear()
    try:
        with pytest.raises(ValueError, match="apt-get install wordnet-base"):
            build_metric("meteor")
    finally:
        module.wordnet.cache_clear()


def test_cosine_is_the_bundled_embedders_cosine() -> None:
    import numpy as np

    from trellis.inference.local.embedder import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    metric = build_metric("cosine")
    metric.embedder = embedder  # type: ignore[attr-defined]
    case = Case(id="x", input="q", expected="The cat is sitting on the mat.")
    close = metric("A cat sits on the mat.", case)
    far = metric("Quarterly revenue grew by four percent.", case)
    vectors = embedder.embed(["A cat sits on the mat.", "The cat is sitting on the mat."])
    assert close == pytest.approx(float(np.dot(vectors[0], vectors[1])), abs=1e-6)
    assert far is not None and close is not None and close > far + 0.3
    # Past MiniLM's 256 word pieces the text is compared on its first 254 (no error).
    long = "word " * 400
    assert metric(long, Case(id="y", input="q", expected=long)) == pytest.approx(1.0, abs=1e-5)
