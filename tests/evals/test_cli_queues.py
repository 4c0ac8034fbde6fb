"""``trellis eval queue``: create a queue from a judged run, take and label items, show
progress and judge-human agreement, export the labels as a dataset."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from trellis.testing.fake_upstream import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_evals import config, invoke  # noqa: E402, F401
from test_labels import reply  # noqa: E402


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=reply).start()
    yield server
    server.stop()


def test_label_a_run_from_the_cli(config: Path, tmp_path: Path) -> None:  # noqa: F811
    suite = yaml.safe_load((tmp_path / "suite.yaml").read_text())
    suite["metrics"] = ["exact", {"name": "judge", "model": "good", "rubric": "Right sum?"}]
    (tmp_path / "judged.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "report.json"
    code, output = invoke(
        config, "eval", "run", str(tmp_path / "judged.yaml"), "--json", str(out), "-q"
    )
    assert code == 0, output
    run_id = json.loads(out.read_text())["run_id"]

    code, output = invoke(config, "eval", "queue", "create", "--run", run_id, "--json")
    assert code == 0, output
    queue = json.loads(output)
    assert queue["progress"]["items"] == 8 and queue["scale"]["max"] == 5
    code, output = invoke(config, "eval", "queue", "list")
    assert code == 0 and queue["id"] in output

    labelled = 0
    while True:
        code, output = invoke(
            config, "eval", "queue", "next", queue["id"], "--labeller", "ann", "--json"
        )
        if code == 3:
            break
        assert code == 0, output
        item = json.loads(output)
        # The person agrees with the judge: 5 for a right sum, 2 for a wrong one.
        score = "5" if item["candidate"] == "good" else "2"
        code, output = invoke(
            config,
            "eval",
            "queue",
            "label",
            queue["id"],
            str(item["id"]),
            "--score",
            score,
            "--labeller",
            "ann",
        )
        assert code == 0, output
        assert "by ann" in output
        labelled += 1
    assert labelled == 8

    code, output = invoke(config, "eval", "queue", "show", queue["id"], "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["progress"]["labelled"] == 8 and shown["progress"]["passed"] == 4
    (agreement,) = shown["agreement"]
    assert agreement["n"] == 8 and agreement["exact"] == 1.0 and agreement["kappa"] == 1.0
    assert agreement["spearman"] == 1.0 and agreement["mean_abs_diff"] == 0.0
    code, output = invoke(config, "eval", "queue", "show", queue["id"])
    assert code == 0 and "judge-human agreement" in output and "1.0000" in output

    code, output = invoke(
        config, "eval", "queue", "export", queue["id"], "--dataset", "sums-human", "--json"
    )
    assert code == 0, output
    exported = json.loads(output)
    assert exported["cases"] == 4 and exported["skipped"] == 4  # the bad answers failed
    code, output = invoke(config, "eval", "dataset", "list", "--json")
    assert any(d["name"] == "sums-human" for d in json.loads(output))

    code, output = invoke(config, "eval", "queue", "label", queue["id"], "1", "--score", "9")
    assert code == 1 and "outside the queue's scale" in output
    code, output = invoke(config, "eval", "queue", "create", "--run", run_id, "--scale", "x")
    assert code == 2 and "bad scale" in output
    code, output = invoke(config, "eval", "queue", "show", "nope")
    assert code == 1 and "no eval queue" in output
    code, output = invoke(config, "eval", "queue", "create", "--run", run_id, "--model", "good")
    assert code == 2 and "not both" in output
    # No chat trace matches: a clear error, no queue.
    code, output = invoke(config, "eval", "queue", "create", "--model", "nothing", "--q", "x")
    assert code == 1 and "no trace matched" in output
    # The run's own chat traces (stored with their prompts) make a queue too.
    code, output = invoke(
        config,
        "eval",
        "queue",
        "create",
        "--model",
        "good",
        "--q",
        "What is 2+1",
        "--scale",
        "pass_fail",
        "--json",
    )
    assert code == 0, output
    traced = json.loads(output)
    assert traced["source"] == {"traces": {"model": "good", "q": "What is 2+1"}}
    assert traced["scale"]["type"] == "pass_fail" and traced["progress"]["items"] >= 1
    code, output = invoke(config, "eval", "queue", "next", traced["id"], "--json")
    assert code == 0, output
    item = json.loads(output)
    assert item["trace_id"] and "2+1" in item["input"] and item["judge"] is None
    code, output = invoke(config, "eval", "queue", "label", traced["id"], str(item["id"]), "--pass")
    assert code == 0 and "(pass)" in output
    code, output = invoke(config, "eval", "queue", "list", "--json")
    assert [q["id"] for q in json.loads(output)] == [traced["id"], queue["id"]]
