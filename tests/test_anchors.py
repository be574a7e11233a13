"""Label anchors: projected vectors taught to spell the label in the decoder's embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama_config
from training_helpers import one_thread, tiny_model, train_config

from chatnt_core import ChatNTModel
from chatnt_core.data.demo import demo_cards, write_demo
from chatnt_core.data.tasks import LabelSpec
from chatnt_core.errors import ConfigError
from chatnt_core.training import anchors
from chatnt_core.training.config import LabelAnchorsConfig, TrainConfig
from chatnt_core.training.trainer import Trainer

CARDS = demo_cards()


def test_anchor_words_come_from_answers_names_or_the_card() -> None:
    ctcf, tf = CARDS["demo-ctcf-site"], CARDS["demo-tf-site"]
    # every answer of a class starts with the same word, and the words differ
    assert anchors.label_anchor(ctcf, "ctcf_site") == "Yes"
    assert anchors.label_anchor(ctcf, "no_ctcf_site") == "No"
    # first words shared by all classes: the label's name
    assert anchors.label_anchor(tf, "GATA1") == "GATA1"
    assert tf.labels is not None
    labels = [LabelSpec(name="a", answers=["Bound by {seq}."], anchor="A1"), *tf.labels[1:]]
    custom = tf.model_copy(update={"labels": labels})
    assert anchors.label_anchor(custom, "a") == "A1"


def test_anchor_text_of_values_uses_the_card_decimals() -> None:
    gc, count = CARDS["demo-gc-content"], CARDS["demo-motif-count"]
    assert anchors.anchor_text(gc, {"value": 0.335, "label": None}) == "0.34"
    assert anchors.anchor_text(count, {"value": 2.0, "label": None}) == "2"
    assert anchors.anchor_text(gc, {"value": None, "label": None}) is None
    assert anchors.anchor_text(CARDS["demo-ctcf-site"], {"label": "other"}) is None
    assert anchors.anchor_targets([7, 8, 9], 5) == [7, 8, 9, 7, 8]
    with pytest.raises(ValueError, match="at least one token"):
        anchors.anchor_targets([], 4)


def _demo_trainer(
    tmp_path: Path, name: str, projection: dict[str, object] | None = None, **overrides: object
) -> Trainer:
    data = tmp_path / "demo"
    if not data.exists():
        write_demo(data, train_size=24, test_size=4)
    model = tiny_model()
    model["encoders"]["dna"] = {
        "name": "motif-cnn",
        "params": {"hidden_size": 16, "kernel_size": 7},
        "projection": {
            "name": "english-aware-perceiver",
            "params": {"num_layers": 1, "summary": True, **(projection or {})},
        },
    }
    model["decoder"]["params"]["random_init"] = tiny_llama_config(max_position_embeddings=1024)
    config = train_config(data, tmp_path / name, model=model, **overrides)
    with one_thread():
        return Trainer(TrainConfig.model_validate(config))


def _mean_anchor_loss(model: ChatNTModel, examples: list[anchors.AnchoredExample]) -> float:
    model.eval()
    with torch.no_grad():
        batch = model.tokenize([e.example for e in examples])
        first = anchors.first_occurrences([e.example for e in examples], batch.num_occurrences)
        projected = model.project_occurrences(batch)[first]
        targets = torch.tensor([e.targets for e in examples])
        return float(anchors.anchor_loss(projected, targets, anchors.embedding_table(model)))


def test_warm_up_lowers_the_anchor_loss_and_touches_only_projections(tmp_path: Path) -> None:
    trainer = _demo_trainer(tmp_path, "a")
    model = trainer.model
    records = [dict(r) for r in trainer.data.datasets[0]]
    examples = anchors.collect_anchored(records, CARDS, model, max_per_task=100)
    assert len(examples) >= 20 and all(len(e.example.turns) == 1 for e in examples)
    encoder_before = [p.detach().clone() for p in model.encoders.parameters()]
    decoder_before = [p.detach().clone() for p in model.decoder.parameters()]
    config = LabelAnchorsConfig(warmup_steps=80, batch_size=8, lr=3e-2)
    with one_thread():
        before = _mean_anchor_loss(model, examples)
        losses = anchors.warm_up_projections(model, examples, config, seed=0)
        after = _mean_anchor_loss(model, examples)
    assert len(losses) == 80
    assert after < 0.8 * before
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoders.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, model.decoder.parameters()))
    assert all(p.requires_grad for p in model.encoders.parameters())  # restored
    # no warm-up gradient is left to add to the first chat update (found by FSDP, which
    # drops .grad when it shards, so the two strategies disagreed on update 1)
    assert all(p.grad is None for p in model.parameters())


def test_warm_up_without_anchored_records_is_a_config_error(tmp_path: Path) -> None:
    trainer = _demo_trainer(tmp_path, "b")
    with pytest.raises(ConfigError, match="no training record"):
        anchors.warm_up_projections(trainer.model, [], LabelAnchorsConfig(warmup_steps=1), 0)


def test_trainer_runs_the_anchor_warm_up_and_adds_the_loss(tmp_path: Path) -> None:
    plain = _demo_trainer(tmp_path, "plain")
    anchored = _demo_trainer(
        tmp_path, "anchored", label_anchors={"warmup_steps": 3, "batch_size": 4, "weight": 1.0}
    )
    again = _demo_trainer(
        tmp_path, "again", label_anchors={"warmup_steps": 3, "batch_size": 4, "weight": 1.0}
    )
    warmed = dict(anchored.model.projections.named_parameters())
    for name, param in plain.model.projections.named_parameters():
        assert torch.equal(param, dict(again.model.projections.named_parameters())[name]) or (
            not torch.equal(param, warmed[name])
        )
    assert any(not torch.equal(p, warmed[n]) for n, p in plain.model.projections.named_parameters())
    # seeded: two runs warm up to the same weights
    for name, param in again.model.projections.named_parameters():
        assert torch.equal(param, warmed[name])
    # every demo row has an anchor on its first sequence mention
    assert anchored._anchor_targets(0) is not None
    projected = torch.randn(3, anchored.model.num_latents, anchored.model.decoder.hidden_size)
    projected.requires_grad_(True)
    rows = [0, 1]
    occurrences = sum(len(anchored.cache.get(r).occurrences) for r in rows)
    loss = anchored._anchor_loss(rows, projected[:occurrences])
    assert loss is not None and loss.item() > 0
    loss.backward()
    assert projected.grad is not None and projected.grad.abs().sum() > 0
    with one_thread():
        result = anchored.train()
    assert result.step == 4


def test_word_outputs_reach_the_decoder_as_exact_token_embeddings(tmp_path: Path) -> None:
    trainer = _demo_trainer(tmp_path, "words")
    model = trainer.model
    projection = model.projections["dna"]
    projection.word_output = "argmax"  # as vocabulary_output: argmax builds it
    example = trainer.cache.get(0)
    from chatnt_core.batching import collate

    batch = collate([example], model.decoder.pad_token_id)
    table = model.decoder.embedding_table()
    model.eval()
    with torch.no_grad():
        merged = model.embed_prompt(batch)  # (1, T, D)
    slots = batch.input_ids[0] == model.decoder.placeholder_token_id
    rows = merged[0, slots]  # (K * occurrences, D)
    distances = torch.cdist(rows, table.detach())
    assert torch.all(distances.min(dim=-1).values < 1e-5)  # every vector is a table row
    # training: the loss still reaches the projection (straight through the word choice)
    model.train()
    out = model(batch)
    assert out.loss is not None and out.projected is not None
    out.loss.backward()
    grads = [p.grad for p in projection.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_anchor_vocabulary_holds_every_anchor_token_and_restricts_the_softmax(
    tmp_path: Path,
) -> None:
    trainer = _demo_trainer(tmp_path, "vocab")
    model = trainer.model
    vocabulary = anchors.anchor_vocabulary(CARDS, model)
    assert vocabulary == sorted(set(vocabulary))
    words = ["Yes", "No", "GATA1", "REST", "0.34", "3", "-1.5"]
    for word in words:  # yes/no, factor names, digits of values
        assert set(model.decoder.tokenize(word)) <= set(vocabulary), word
    assert len(vocabulary) < model.decoder.vocab_size
    # the restricted loss is the cross-entropy over the vocabulary's rows only
    table = anchors.embedding_table(model)
    ids = torch.tensor(vocabulary)
    projected = torch.randn(2, 3, table.shape[1])
    targets = ids[torch.tensor([[0, 1, 2], [2, 1, 0]])]
    restricted = anchors.anchor_loss(projected, targets, table, vocabulary=ids)
    logits = projected @ table[ids].T
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), torch.tensor([0, 1, 2, 2, 1, 0])
    )
    assert torch.allclose(restricted, expected, atol=1e-5)
    assert not torch.allclose(restricted, anchors.anchor_loss(projected, targets, table))


def test_word_mixture_stays_among_the_vocabulary_words(tmp_path: Path) -> None:
    trainer = _demo_trainer(tmp_path, "mixture")
    model = trainer.model
    projection = model.projections["dna"]
    projection.word_output = "mixture"
    words = [5, 9]
    projection.set_word_vocabulary(words)
    from chatnt_core.batching import collate

    batch = collate([trainer.cache.get(0)], model.decoder.pad_token_id)
    model.eval()
    with torch.no_grad():
        merged = model.embed_prompt(batch)  # (1, T, D)
        table = model.decoder.embedding_table()
    rows = merged[0, batch.input_ids[0] == model.decoder.placeholder_token_id]  # (K, D)
    # each vector is a convex mix of the two words: on the segment between them
    a, b = table[5], table[9]
    share = ((rows - b) @ (a - b)) / (a - b).pow(2).sum()
    assert torch.all((share >= -1e-5) & (share <= 1 + 1e-5))
    rebuilt = share[:, None] * a + (1 - share[:, None]) * b
    assert torch.allclose(rows, rebuilt, atol=1e-4)
    # argmax over the same vocabulary hands over exactly one of the two words
    projection.word_output = "argmax"
    with torch.no_grad():
        merged = model.embed_prompt(batch)
    rows = merged[0, batch.input_ids[0] == model.decoder.placeholder_token_id]
    assert all(torch.equal(r, a) or torch.equal(r, b) for r in rows)


def test_a_fresh_run_hands_the_anchor_vocabulary_to_word_output_projections(
    tmp_path: Path,
) -> None:
    plain = _demo_trainer(tmp_path, "plain", label_anchors={"warmup_steps": 0})
    assert plain.model.projections["dna"].word_vocabulary() is None  # not word-output
    assert plain.anchor_vocabulary is not None  # the anchor loss still uses it
    trainer = _demo_trainer(
        tmp_path, "handed", {"vocabulary_output": "argmax"}, label_anchors={"warmup_steps": 0}
    )
    expected = anchors.anchor_vocabulary(CARDS, trainer.model)
    assert trainer.anchor_vocabulary.tolist() == expected  # type: ignore[union-attr]
    handed = trainer.model.projections["dna"].word_vocabulary()
    assert handed is not None and handed.tolist() == expected
    full = _demo_trainer(
        tmp_path, "full", {"vocabulary_output": "argmax"},
        label_anchors={"warmup_steps": 0, "vocabulary": "full"},
    )  # fmt: skip
    assert full.anchor_vocabulary is None
    assert full.model.projections["dna"].word_vocabulary() is None


def test_checkpoints_keep_the_summary_statistics_and_held_encoders_keep_theirs(
    tmp_path: Path,
) -> None:
    trainer = _demo_trainer(tmp_path, "stats", max_steps=2, lr_scale={"encoders": 0.0})
    model = trainer.model
    encoder_stats = {k: v.clone() for k, v in model.encoders.state_dict().items() if "running" in k}
    assert encoder_stats  # the motif CNN has batch-norm statistics
    with one_thread():
        result = trainer.train()
    assert result.checkpoint is not None
    # a part held at lr_scale 0 ran in eval mode: its running statistics did not move
    for name, value in model.encoders.state_dict().items():
        if name in encoder_stats:
            assert torch.equal(value, encoder_stats[name]), name
    summary = model.projections["dna"].summary_norm
    assert summary is not None and int(summary.batches) > 0  # statistics were gathered
    loaded = ChatNTModel.from_checkpoint(result.checkpoint).eval()
    loaded_summary = loaded.projections["dna"].summary_norm
    assert loaded_summary is not None
    assert torch.equal(loaded_summary.mean, summary.mean)
    assert torch.equal(loaded_summary.var, summary.var)
    example = trainer.cache.get(0)
    from chatnt_core.batching import collate

    batch = collate([example], model.decoder.pad_token_id)
    model.eval()
    with torch.no_grad():
        expected = model.project_occurrences(batch)
        got = loaded.project_occurrences(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
