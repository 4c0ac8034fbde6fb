"""``trellis guard check``: score texts with the prompt-injection guard, offline.

For one string it prints the verdict; for a JSONL file, one verdict per line and, when
the lines carry a ``label`` (``attack``/``benign``, or true/false), the precision,
recall and false-positive rate at the threshold, so users can measure the guard on
their own traffic before turning ``guard.input`` to ``flag`` or ``block``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from trellis.cli._common import ConfigOption, JsonOption, console, err_console, load_settings

guard_app = typer.Typer(help="The prompt-injection guard.", no_args_is_help=True)

_ATTACK = {"attack", "injection", "jailbreak", "malicious", "true", "1", "yes", "flagged"}
_BENIGN = {"benign", "safe", "false", "0", "no", "clean"}


def _label(value: Any) -> bool | None:
    """True for an attack, False for benign, None when the line has no usable label."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _ATTACK:
        return True
    if text in _BENIGN:
        return False
    return None


@guard_app.command("check")
def check(
    text: Annotated[str | None, typer.Argument(help="The text to score")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help='JSONL: one {"text": ..., "label"?: ...} a line'),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Flag at this score (default: guard.input's)"),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score TEXT, or every line of --file, for prompt injection and jailbreaks."""
    from trellis.guard.injection import default_detector

    if (text is None) == (file is None):
        err_console.print("[red]give either TEXT or --file[/red]")
        raise typer.Exit(2)
    settings = load_settings(config)
    limit = threshold if threshold is not None else settings.guard.input.threshold
    detector = default_detector()
    if text is not None:
        verdict = detector.check(text, limit)
        if as_json:
            console.print_json(json.dumps(verdict.as_dict()))
        else:
            state = "[red]flagged[/red]" if verdict.flagged else "[green]ok[/green]"
            found = ", ".join(verdict.categories) or "-"
            console.print(f"{state} score={verdict.score:.4f} categories={escape(found)}")
        raise typer.Exit(1 if verdict.flagged else 0)
    assert file is not None
    try:
        lines = file.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        err_console.print(f"[red]cannot read {escape(str(file))}: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    scored = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            body = record["text"]
            if not isinstance(body, str):
                raise TypeError("text is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            err_console.print(f"[red]{escape(str(file))}:{number}: {escape(repr(exc))}[/red]")
            raise typer.Exit(2) from None
        verdict = detector.check(body, limit)
        scored += 1
        row: dict[str, Any] = {"line": number, **verdict.as_dict()}
        if "id" in record:
            row["id"] = record["id"]
        label = _label(record.get("label"))
        if label is not None:
            row["label"] = "attack" if label else "benign"
            if label:
                key = "tp" if verdict.flagged else "fn"
            else:
                key = "fp" if verdict.flagged else "tn"
            counts[key] += 1
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary: dict[str, Any] = {"lines": scored, "threshold": limit}
    if any(counts.values()):
        tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
        summary.update(counts)
        summary["precision"] = round(tp / (tp + fp), 4) if tp + fp else None
        summary["recall"] = round(tp / (tp + fn), 4) if tp + fn else None
        summary["fpr"] = round(fp / (fp + tn), 4) if fp + tn else None
    if as_json:
        sys.stdout.write(json.dumps({"summary": summary}) + "\n")
    else:
        err_console.print(" ".join(f"{k}={v}" for k, v in summary.items()))
