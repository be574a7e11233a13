"""``evaluate_model`` and ``chatnt evaluate`` / ``chatnt calibrate`` end to end on a tiny model.

A random tiny model answers noise, so most answers are unparseable: the report must count
them exactly. An oracle run (generation replaced by the dataset's own answers) checks the
wiring from sampled rows to scores: every metric must then be perfect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import chatnt_core.inference.generation
from chatnt_core.cli import main
from chatnt_core.data.demo import DEMO_TASKS, write_demo
from chatnt_core.data.tasks import TaskCard, load_task_cards
from chatnt_core.errors import ChatNTError
from chatnt_core.evaluation import cli as evaluation_cli
from chatnt_core.evaluation import evaluate as evaluate_module
from chatnt_core.evaluation.calibrate import (
    CALIBRATION_FILE,
    fit_calibrators,
    load_calibration,
    save_calibration,
)
from chatnt_core.evaluation.data import (
    open_split,
    positive_probabilities,
    read_records,
    task_rows,
)
from chatnt_core.evaluation.evaluate import CALIBRATED_ON_THE_FLY, evaluate_model
from chatnt_core.evaluation.parsing import parse_answer
from chatnt_core.model import ChatNTModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 train and 6 test examples per demo task (seed 0: both CTCF classes in each split)."""
    out = tmp_path_factory.mktemp("eval") / "demo"
    write_demo(out, train_size=6, test_size=6, seed=0)
    return out


@pytest.fixture(scope="module")
def model() -> ChatNTModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ChatNTModel.from_config("tiny-random").eval()


@pytest.fixture(scope="module")
def cards() -> dict[str, TaskCard]:
    return load_task_cards()


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


def test_report_files_rows_and_unparseable_counts(
    tmp_path: Path, demo: Path, model: ChatNTModel, cards: dict[str, TaskCard]
) -> None:
    out = tmp_path / "report"
    report = evaluate_model(model, demo, out, max_per_task=3, batch_size=5, max_new_tokens=4)
    for name in ("metrics.json", "metrics.md", "predictions.jsonl"):
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["tasks"]) == sorted(DEMO_TASKS) == sorted(report.tasks)
    table = [line for line in (out / "metrics.md").read_text().splitlines() if "| demo-" in line]
    predictions = [
        json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()
    ]
    for name, summary in metrics["tasks"].items():
        rows = [p for p in predictions if p["task"] == name]
        assert summary["n"] == len(rows) == 3
        # recomputed from the stored answers with the parser, independently of the report
        recount = sum(not parse_answer(cards[name], p["answer"]).parseable for p in rows)
        assert summary["n_unparseable"] == recount == sum(not p["parseable"] for p in rows)
        row = next(line for line in table if line.startswith(f"| {name} |"))
        assert row.rstrip(" |").endswith(f"{100 * recount / 3:.1f}")
        assert summary["plots"]
        for plot in summary["plots"]:
            assert _is_png(out / plot)
    assert metrics["tasks"]["demo-ctcf-site"]["perplexity_classifier"]["uncalibrated"]
    assert "calibrated" not in metrics["tasks"]["demo-ctcf-site"]["perplexity_classifier"]
    assert (out / "plots" / "demo-gc-content-scatter.png").is_file()
    assert (out / "plots" / "demo-tf-site-confusion.png").is_file()
    assert all(math_ok(p.get("p_positive")) for p in predictions if p["task"] == "demo-ctcf-site")


def math_ok(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_sampling_is_seeded_and_capped(demo: Path, cards: dict[str, TaskCard]) -> None:
    dataset = open_split(demo, "test")
    first, skipped = task_rows(dataset, cards, None, 4, seed=0, where="test")
    again, _ = task_rows(dataset, cards, None, 4, seed=0, where="test")
    assert first == again and not skipped
    assert all(len(rows) == 4 and rows == sorted(rows) for rows in first.values())
    everything, _ = task_rows(dataset, cards, ["demo-tf-site"], 100, seed=0, where="test")
    assert list(everything) == ["demo-tf-site"] and len(everything["demo-tf-site"]) == 6
    assert set(first["demo-tf-site"]) <= set(everything["demo-tf-site"])


def test_oracle_answers_score_perfectly(
    tmp_path: Path, demo: Path, model: ChatNTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generation replaced by each record's true answer, looked up by its prompt: a row
    mix-up anywhere between sampling, length-sorted batching and scoring breaks this."""
    records = [dict(r) for r in open_split(demo, "test")]
    truth = {(r["turns"][-1]["user"], r["sequences"][0]["sequence"]): r for r in records}
    said: list[str] = []

    class Batch:
        def __init__(self, examples: Sequence[Any]) -> None:
            self.examples = examples
            self.user_names: list[dict[str, str]] = []  # no aliases: texts come back as said

        def to(self, device: Any) -> Batch:
            return self

    def generate(_: Any, batch: Batch, config: Any) -> list[list[int]]:
        rows = []
        for example in batch.examples:
            key = (example.turns[-1].user, next(iter(example.sequences.values())).sequence)
            said.append(truth[key]["turns"][-1]["assistant"])
            rows.append([len(said) - 1])
        return rows

    def probabilities(
        _: Any, card: TaskCard, rows: Sequence[Any], *args: Any, **kwargs: Any
    ) -> np.ndarray:
        return np.array([0.9 if r["label"] == "ctcf_site" else 0.2 for r in rows])

    monkeypatch.setattr(model, "tokenize", Batch)
    monkeypatch.setattr(model.decoder, "detokenize", lambda ids: said[ids[0]])
    monkeypatch.setattr(chatnt_core.inference.generation, "generate_ids", generate)
    monkeypatch.setattr(evaluate_module, "positive_probabilities", probabilities)
    report = evaluate_model(model, demo, None, batch_size=4)
    for name, evaluation in report.tasks.items():
        summary = evaluation.summary
        assert summary["n"] == 6 and summary["n_unparseable"] == 0, name
        if evaluation.card.kind == "regression":
            assert summary["score"] > 0.99, name  # answers are rounded to the card's decimals
        else:
            assert summary["metrics"]["mcc"] == pytest.approx(1.0), name
            assert summary["metrics"]["f1"] == pytest.approx(1.0), name
    ctcf = report.tasks["demo-ctcf-site"].summary["perplexity_classifier"]["uncalibrated"]
    assert ctcf["auroc"] == pytest.approx(1.0) and ctcf["mcc"] == pytest.approx(1.0)


def test_calibrators_are_stored_and_used(
    tmp_path: Path, demo: Path, model: ChatNTModel, cards: dict[str, TaskCard]
) -> None:
    fitted, skipped = fit_calibrators(model, demo, cards, max_per_task=6, batch_size=6)
    assert list(fitted) == ["demo-ctcf-site"] and not skipped
    assert (fitted["demo-ctcf-site"].n_examples, fitted["demo-ctcf-site"].n_positive) == (6, 2)
    checkpoint = tmp_path / "checkpoint-000001"
    checkpoint.mkdir()
    path = save_calibration(checkpoint, fitted, demo)
    stored = json.loads(path.read_text())
    assert path.name == CALIBRATION_FILE and list(stored["tasks"]) == ["demo-ctcf-site"]
    assert stored["tasks"]["demo-ctcf-site"]["calibrator"]["C"] == pytest.approx(0.1 * 10_000 / 6)
    save_calibration(checkpoint, {"other": fitted["demo-ctcf-site"]}, demo)  # merges
    loaded = load_calibration(checkpoint)
    assert sorted(loaded) == ["demo-ctcf-site", "other"]
    assert loaded["demo-ctcf-site"].calibrator.coef == fitted["demo-ctcf-site"].calibrator.coef

    out = tmp_path / "report"
    report = evaluate_model(
        model, demo, out, tasks=["demo-ctcf-site"], max_new_tokens=2, calibrations=loaded
    )
    classifier = report.tasks["demo-ctcf-site"].summary["perplexity_classifier"]
    assert classifier["calibrator"] == "checkpoint"
    for when in ("uncalibrated", "calibrated"):
        assert set(classifier[when]) == {"auroc", "mcc", "ece"}
        assert classifier[when]["ece"] is not None
    assert _is_png(out / "plots" / "demo-ctcf-site-reliability.png")
    assert "| demo-ctcf-site |" in (out / "metrics.md").read_text().split("Perplexity-based")[1]

    # a card whose answer phrasings changed no longer matches the calibrator
    card = cards["demo-ctcf-site"]
    labels = [label.model_copy(update={"answers": ["Yes, {seq} does."]}) for label in card.labels]
    changed = {"demo-ctcf-site": card.model_copy(update={"labels": labels})}
    report = evaluate_model(
        model, demo, None, max_new_tokens=1, calibrations=loaded, cards=changed, max_per_task=2
    )
    summary = report.tasks["demo-ctcf-site"].summary
    assert "calibrated" not in summary["perplexity_classifier"]
    assert any("changed since calibration" in note for note in summary["notes"])


def test_a_calibrators_formulation_is_stored_and_used_for_its_raw_probabilities(
    tmp_path: Path, demo: Path, model: ChatNTModel, cards: dict[str, TaskCard]
) -> None:
    fitted, _ = fit_calibrators(
        model, demo, cards, max_per_task=6, batch_size=6, formulation="candidate_softmax"
    )
    checkpoint = tmp_path / "checkpoint-000001"
    checkpoint.mkdir()
    path = save_calibration(checkpoint, fitted, demo)
    assert json.loads(path.read_text())["tasks"]["demo-ctcf-site"]["formulation"] == (
        "candidate_softmax"
    )
    loaded = load_calibration(checkpoint)
    assert loaded["demo-ctcf-site"].formulation == "candidate_softmax"
    report = evaluate_model(
        model, demo, None, tasks=["demo-ctcf-site"], max_per_task=4, max_new_tokens=1,
        calibrations=loaded,
    )  # fmt: skip
    evaluation = report.tasks["demo-ctcf-site"]
    records = read_records(open_split(demo, "test"), evaluation.rows)
    card = cards["demo-ctcf-site"]
    softmax = positive_probabilities(model, card, records, 4, formulation="candidate_softmax")
    paper = positive_probabilities(model, card, records, 4)
    assert evaluation.probabilities is not None
    assert np.allclose(evaluation.probabilities, softmax, atol=1e-6)
    assert not np.allclose(softmax, paper, atol=1e-3)  # the two formulations differ

    stored = json.loads(path.read_text())
    stored["tasks"]["demo-ctcf-site"]["formulation"] = "vibes"
    path.write_text(json.dumps(stored))
    with pytest.raises(ChatNTError, match="formulation 'vibes'"):
        load_calibration(checkpoint)


def test_calibrate_on_train_fits_on_the_fly(tmp_path: Path, demo: Path, model: ChatNTModel) -> None:
    out = tmp_path / "report"
    report = evaluate_model(
        model,
        demo,
        out,
        tasks=["demo-ctcf-site"],
        max_per_task=4,
        max_new_tokens=1,
        calibrate_on="train",
        calibration_size=6,
    )
    classifier = report.tasks["demo-ctcf-site"].summary["perplexity_classifier"]
    assert classifier["calibrator"] == CALIBRATED_ON_THE_FLY
    assert "demo-ctcf-site" in load_calibration(out)  # kept with the report


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "CKPT", "--data", "MISSING"], "does not exist"),
        (["evaluate", "CKPT", "--data", "DEMO", "--tasks", "demo-ctcf-sit"], "did you mean"),
        (["evaluate", "CKPT", "--data", "DEMO", "--calibrate-on", "test"], "takes 'train'"),
        (["calibrate", "CKPT", "--data", "MISSING"], "does not exist"),
        (["calibrate", "CKPT", "--data", "DEMO", "--tasks", "nope"], "unknown task"),
        (["calibrate", "CKPT", "--data", "DEMO", "--formulation", "x"], "use one of paper"),
        (["evaluate", "CKPT", "--data", "DEMO"], "neither a checkpoint"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path,
    demo: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    swap = {
        "CKPT": str(tmp_path / "no-checkpoint"),
        "MISSING": str(tmp_path / "x"),
        "DEMO": str(demo),
    }
    assert _run([swap.get(a, a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_calibrate_then_evaluate(
    tmp_path: Path,
    demo: Path,
    model: ChatNTModel,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoint = tmp_path / "checkpoint-000001"
    checkpoint.mkdir()
    monkeypatch.setattr(evaluation_cli, "_load", lambda *args: (checkpoint, model))
    assert _run(["calibrate", str(checkpoint), "--data", str(demo), "--max-per-task", "6"]) == 0
    assert "demo-ctcf-site" in load_calibration(checkpoint)
    argv = ["evaluate", str(checkpoint), "--data", str(demo), "--max-per-task", "2"]
    argv += ["--max-new-tokens", "2", "--tasks", "demo-ctcf-site,demo-gc-content"]
    assert _run(argv) == 0
    metrics = json.loads((checkpoint / "evaluation" / "metrics.json").read_text())
    assert sorted(metrics["tasks"]) == ["demo-ctcf-site", "demo-gc-content"]
    assert metrics["tasks"]["demo-ctcf-site"]["perplexity_classifier"]["calibrator"] == "checkpoint"
    assert "| demo-gc-content | pearson |" in capsys.readouterr().out


def test_cli_evaluates_with_a_card_given_as_a_file(
    tmp_path: Path,
    demo: Path,
    model: ChatNTModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from chatnt_core.data.tasks import registry_root

    card = yaml.safe_load((registry_root() / "tasks" / "demo-ctcf-site.yaml").read_text())
    card["metric"] = "f1"  # the file's card, not the shipped one, must be used
    path = tmp_path / "my-ctcf.yaml"
    path.write_text(yaml.safe_dump(card))
    checkpoint = tmp_path / "checkpoint-000001"
    checkpoint.mkdir()
    monkeypatch.setattr(evaluation_cli, "_load", lambda *args: (checkpoint, model))
    argv = ["evaluate", str(checkpoint), "--data", str(demo), "--max-per-task", "2"]
    argv += ["--max-new-tokens", "1", "--tasks", "demo-ctcf-site", "--task", str(path)]
    assert _run(argv) == 0
    metrics = json.loads((checkpoint / "evaluation" / "metrics.json").read_text())
    assert metrics["tasks"]["demo-ctcf-site"]["metric"] == "f1"


def test_cli_on_a_trained_checkpoint(tmp_path: Path, demo: Path) -> None:
    """The real path: train one step, calibrate and evaluate the checkpoint it wrote."""
    from training_helpers import train_demo_one_step

    checkpoint = train_demo_one_step(demo, tmp_path / "run")
    assert _run(["calibrate", str(tmp_path / "run"), "--data", str(demo)]) == 0
    assert (checkpoint / CALIBRATION_FILE).is_file()
    argv = ["evaluate", str(tmp_path / "run"), "--data", str(demo), "--max-new-tokens", "2"]
    assert _run(argv) == 0
    metrics = json.loads((checkpoint / "evaluation" / "metrics.json").read_text())
    assert metrics["tasks"]["demo-ctcf-site"]["perplexity_classifier"]["calibrated"]


def test_progress_goes_to_logs_as_plain_lines(
    demo: Path, model: ChatNTModel, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate_model(model, demo, None, tasks=["demo-gc-content"], max_per_task=3,
                   max_new_tokens=1, progress=True)  # fmt: skip
    err = capsys.readouterr().err  # not a terminal here: lines, not a bar
    assert "scored 3/3 examples (demo-gc-content: answering), " in err and "ETA" in err


def test_answers_decoded_by_scoring_are_the_generated_answers(
    demo: Path, model: ChatNTModel, cards: dict[str, TaskCard], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records whose greedy answer the phrasing scores already hold (here: made so by
    handing the scores of every other record that record's generated ids) come out of
    scoring as text and are not decoded again; the answers are unchanged."""
    import chatnt_core.calibration
    from chatnt_core.evaluation import data as data_module

    dataset = open_split(demo, "test")
    rows, _ = task_rows(dataset, cards, ["demo-ctcf-site"], 6, seed=0, where="test")
    records = read_records(dataset, rows["demo-ctcf-site"])
    config = chatnt_core.inference.generation.GenerationConfig(max_new_tokens=6)
    plain = data_module.generate_answers(model, records, 4, 6)
    sequence_of = [r["sequences"][0]["sequence"] for r in records]
    ids_of = [
        chatnt_core.inference.generation.generate_ids(
            model, model.tokenize([data_module.record_to_example(r, with_answers=False)]), config
        )[0]
        for r in records
    ]
    real_scoring = chatnt_core.calibration.class_probabilities

    def scoring(model: Any, examples: Any, *args: Any, **kwargs: Any) -> Any:
        probs, scores = real_scoring(model, examples, *args, **kwargs)
        index = [sequence_of.index(next(iter(e.sequences.values())).sequence) for e in examples]
        found = [ids_of[i] if i % 2 == 0 else None for i in index]
        scores.greedy_answers = lambda stop_ids, max_new_tokens: found
        return probs, scores

    monkeypatch.setattr(chatnt_core.calibration, "class_probabilities", scoring)
    decoded: dict[int, str] = {}
    card = cards["demo-ctcf-site"]
    positive_probabilities(model, card, records, 4, greedy_answers=decoded, max_new_tokens=6)
    assert sorted(decoded) == list(range(0, len(records), 2))
    assert all(decoded[i] == plain[i] for i in decoded)

    generated: list[int] = []
    real_generate = chatnt_core.inference.generation.generate_ids
    monkeypatch.setattr(
        chatnt_core.inference.generation,
        "generate_ids",
        lambda m, batch, config: (
            generated.append(batch.input_ids.shape[0]) or real_generate(m, batch, config)
        ),
    )
    answers = data_module.generate_answers(model, records, 4, 6, known=decoded)
    assert answers == plain
    assert sum(generated) == len(records) - len(decoded)  # only the others were decoded
