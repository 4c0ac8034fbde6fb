"""Datasets: JSONL and CSV parsing, errors that name the line, content-hash versions, and
storing versions in the database (both backends)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trellis.errors import NotFoundError
from trellis.evals import DatasetError, EvalStore, load_dataset, parse_dataset
from trellis.store import Database

CASES = [
    {"id": "a", "input": "What is 2+2?", "expected": "4"},
    {
        "id": "b",
        "input": [{"role": "user", "content": "Say hi"}],
        "expected": "hi",
        "context": ["Greetings are short."],
        "relevant_ids": ["doc-1"],
        "metadata": {"topic": "greeting"},
    },
]


def _jsonl(cases: list[dict[str, object]]) -> str:
    return "\n".join(json.dumps(c) for c in cases) + "\n"


def test_jsonl_cases_load_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(_jsonl(CASES) + "\n")  # blank lines are skipped
    dataset = load_dataset(path)
    assert dataset.name == "qa" and [c.id for c in dataset.cases] == ["a", "b"]
    second = dataset.cases[1]
    assert second.input == [{"role": "user", "content": "Say hi"}]
    assert second.relevant_ids == ["doc-1"] and second.metadata == {"topic": "greeting"}
    assert second.fields()["topic"] == "greeting" and second.fields()["input"] == "Say hi"
    assert len(dataset.version) == 12 and dataset.ref == f"qa@{dataset.version}"


def test_csv_gives_the_same_cases_and_version_as_jsonl(tmp_path: Path) -> None:
    csv_text = (
        "id,input,expected,context,relevant_ids,metadata\n"
        "a,What is 2+2?,4,,,\n"
        'b,"[{""role"": ""user"", ""content"": ""Say hi""}]",hi,'
        '"[""Greetings are short.""]","[""doc-1""]","{""topic"": ""greeting""}"\n'
    )
    (tmp_path / "qa.csv").write_text(csv_text)
    (tmp_path / "qa.jsonl").write_text(_jsonl(CASES))
    from_csv = load_dataset(tmp_path / "qa.csv")
    from_jsonl = load_dataset(tmp_path / "qa.jsonl")
    assert from_csv.cases == from_jsonl.cases
    assert from_csv.version == from_jsonl.version


def test_the_version_follows_the_content() -> None:
    one = parse_dataset(_jsonl(CASES))
    assert parse_dataset(_jsonl(CASES).replace("\n", "\n\n")).version == one.version
    changed = [dict(CASES[0], expected="four"), CASES[1]]
    assert parse_dataset(_jsonl(changed)).version != one.version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "a", "input": "x"}\n{"id": "b"\n', "data.jsonl:2: not valid JSON"),
        ('{"id": "a", "input": "x"}\n\n{"id": "b"}\n', "data.jsonl:3: missing field 'input'"),
        ('{"id": "a", "input": "x", "answer": "y"}\n', "data.jsonl:1: unknown field 'answer'"),
        (
            '{"id": "a", "input": "x"}\n{"id": "a", "input": "y"}\n',
            "data.jsonl:2: duplicate id 'a' (first on line 1)",
        ),
        ('{"id": "a", "input": []}\n', "data.jsonl:1: field 'input'"),
        ('{"id": "a", "input": [{"content": "x"}]}\n', "message 1 needs a 'role'"),
        ("[1, 2]\n", "data.jsonl:1: a case must be a JSON object"),
        ("\n\n", "data.jsonl: the dataset has no cases"),
    ],
)
def test_jsonl_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_dataset(text, source="data.jsonl")
    assert message in caught.value.message
    assert caught.value.status_code == 400


def test_csv_errors_name_the_line_of_the_record() -> None:
    text = 'id,input,metadata\na,x,\nb,"two\nlines",\nc,y,{not json}\n'
    with pytest.raises(DatasetError, match=r"d.csv:5: column 'metadata' is not valid JSON"):
        parse_dataset(text, fmt="csv", source="d.csv")
    with pytest.raises(DatasetError, match=r"d.csv:1: the CSV header needs an 'input' column"):
        parse_dataset("id,question\na,b\n", fmt="csv", source="d.csv")


def test_a_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope.jsonl")


async def test_versions_are_stored_once_and_read_back(db: Database) -> None:
    store = EvalStore(db)
    first = parse_dataset(_jsonl(CASES), name="qa")
    assert await store.save_dataset(first) is True
    assert await store.save_dataset(first) is False  # the same content: the same version
    second = parse_dataset(_jsonl(CASES[:1]), name="qa")
    assert await store.save_dataset(second) is True
    read = await store.dataset(first.ref)
    assert read.cases == first.cases and read.version == first.version
    assert (await store.dataset("qa")).version == second.version  # the newest
    infos = await store.datasets()
    assert sorted((i.name, i.version, i.cases) for i in infos) == sorted(
        [("qa", first.version, 2), ("qa", second.version, 1)]
    )
    with pytest.raises(NotFoundError):
        await store.dataset("qa@000000000000")


def test_unescaped_line_separators_inside_json_strings_stay_in_the_case() -> None:
    # JSON allows U+2028, U+2029 and U+0085 raw inside strings; only "\n" ends a line.
    text = '{"id": "a", "input": "one\u2028two\u0085three"}\r\n{"id": "b", "input": "x"}\n'
    dataset = parse_dataset(text, name="seps")
    assert [case.id for case in dataset.cases] == ["a", "b"]
    assert dataset.cases[0].input == "one\u2028two\u0085three"
