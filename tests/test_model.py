"""The assembled model end to end on tiny random components: merge, loss, generation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny_models import save_tiny_llama, sharp_tiny_model

from chatnt_core import ChatNTModel, ChatSession, Example, GenerationConfig, SequenceInput, Turn
from chatnt_core.batching import IGNORE_INDEX, tokenize_example
from chatnt_core.cli import main
from chatnt_core.config import PromptConfig, parse_config
from chatnt_core.errors import PlaceholderCountError, PromptError, PromptTooLongError
from chatnt_core.inference.generation import generate_ids
from chatnt_core.merge import merge_sequence_embeddings
from chatnt_core.modality import Modality
from chatnt_core.presets import preset_path

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"
RNA = "ACGUUAGCUAGCUAGGCUAA"
PROTEIN = "MKVLAAGIVGLLLA"


def tiny_config(**decoder_params: Any) -> dict[str, Any]:
    data = yaml.safe_load(preset_path("tiny-random").read_text())
    data["decoder"]["params"].update(decoder_params)
    return data


@pytest.fixture(scope="module")
def model() -> ChatNTModel:
    torch.manual_seed(0)
    return ChatNTModel.from_config("tiny-random").eval()


def test_components_follow_the_config(model: ChatNTModel) -> None:
    assert set(model.modalities) == {Modality.DNA, Modality.RNA, Modality.PROTEIN}
    assert all(not p.requires_grad for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.encoders.parameters())
    assert all(p.requires_grad for p in model.projections.parameters())


def test_placeholders_expand_to_k_per_tag_and_labels_cover_the_answer(model: ChatNTModel) -> None:
    example = Example(
        [Turn("Is @a.fna like @a.fna and @p.faa?", "yes, it is")],
        {"a.fna": SequenceInput("a.fna", DNA), "p.faa": SequenceInput("p.faa", PROTEIN)},
    )
    batch = model.tokenize([example])
    k = model.num_latents
    assert int((batch.input_ids == model.decoder.placeholder_token_id).sum()) == 3 * k
    assert batch.sequences == {Modality.DNA: [DNA], Modality.PROTEIN: [PROTEIN]}
    assert batch.occurrence_sequence == [0, 0, 0]
    answer = batch.labels[batch.labels != IGNORE_INDEX].tolist()
    assert answer[-1] == model.decoder.eos_token_id
    assert model.decoder.detokenize(answer[:-1]).strip() == "yes, it is"


def test_merge_count_check(model: ChatNTModel) -> None:
    ids = torch.tensor([[5, model.decoder.placeholder_token_id, 6]])
    embeddings = torch.zeros(1, 3, 4)
    with pytest.raises(PlaceholderCountError, match="1 placeholder positions but 1 sequence"):
        merge_sequence_embeddings(embeddings, ids, torch.ones(1, 2, 4), ids[0, 1].item())
    merged = merge_sequence_embeddings(embeddings, ids, torch.ones(1, 1, 4), ids[0, 1].item())
    assert merged[0, 1].tolist() == [1.0] * 4 and merged[0, 0].abs().sum() == 0


def test_placeholder_text_in_system_prompt_fails_the_count(model: ChatNTModel) -> None:
    prompt = PromptConfig(system_prompt=f"Sequences look like {model.decoder.placeholder_token}.")
    example = Example([Turn("@a.fna?")], {"a.fna": SequenceInput("a.fna", DNA)})
    with pytest.raises(PlaceholderCountError, match="2 placeholder tokens for 1 tags"):
        tokenize_example(example, model.decoder, prompt, model.num_latents, model.modalities)


def test_placeholder_text_in_a_message_is_refused(model: ChatNTModel) -> None:
    with pytest.raises(PromptError, match="reserved placeholder"):
        model.prompt_batch([f"what is {model.decoder.placeholder_token}?"])


def test_loss_counts_answer_tokens_only(model: ChatNTModel) -> None:
    short = Example([Turn("GC content of @s.fna?", "0.5")], {"s.fna": SequenceInput("s.fna", DNA)})
    long = Example(
        [Turn("A much longer question about the protein @p.faa, please answer", "no")],
        {"p.faa": SequenceInput("p.faa", PROTEIN)},
    )
    with torch.no_grad():
        together = model(model.tokenize([short, long]))
        alone = [model(model.tokenize([e])) for e in (short, long)]
        counts = [
            int((model.tokenize([e]).labels[:, 1:] != IGNORE_INDEX).sum()) for e in (short, long)
        ]
    assert together.loss is not None and all(a.loss is not None for a in alone)
    weighted = sum(float(a.loss) * n for a, n in zip(alone, counts)) / sum(counts)  # type: ignore[arg-type]
    # Padding and prompt tokens carry no loss: the batch loss is the token-weighted mean.
    assert abs(float(together.loss) - weighted) < 1e-5

    # Changing a prompt token changes the logits but the labels never include it.
    batch = model.tokenize([short])
    assert (batch.labels[batch.attention_mask.logical_not()] == IGNORE_INDEX).all()
    prompt_positions = batch.labels == IGNORE_INDEX
    assert int(prompt_positions.sum()) > int((~prompt_positions).sum())


def test_loss_backpropagates_to_encoder_and_projection_not_decoder() -> None:
    torch.manual_seed(0)
    model = ChatNTModel.from_config("tiny-random").train()
    example = Example([Turn("Is @s.fna GC-rich?", "yes")], {"s.fna": SequenceInput("s.fna", DNA)})
    out = model(model.tokenize([example]))
    assert out.loss is not None
    out.loss.backward()
    assert model.encoder(Modality.DNA).parameters().__next__().grad is not None
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.projections.parameters()
    )
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.encoder(Modality.RNA).parameters())


def test_cached_and_uncached_greedy_generation_agree(model: ChatNTModel) -> None:
    questions = ["Is there a TATA box in @a.fna?", "Which protein is @p.faa?", "Hi @r.frn"]
    sequences = [{"a.fna": DNA}, {"p.faa": PROTEIN}, {"r.frn": RNA}]
    batch = model.prompt_batch(questions, sequences)
    cached = generate_ids(model, batch, GenerationConfig(max_new_tokens=12, use_cache=True))
    full = generate_ids(model, batch, GenerationConfig(max_new_tokens=12, use_cache=False))
    assert cached == full
    assert any(len(row) > 0 for row in cached)


def test_shared_prefix_generation_matches_running_every_row_in_full() -> None:
    """Padded rows, two tags in one prompt: the prefix cache changes nothing but the work.

    The decoder's weights are drawn large so that its greedy tokens depend on the input
    and on positions (at its default init the tiny decoder answers every row alike).
    """
    model = sharp_tiny_model()
    questions = [
        "Is there a CTCF site in @a.fna?",
        "Is there a CTCF site in @b.fna or in @a.fna, and why would there be one?",
        "Is there a CTCF site in @p.faa?",
    ]
    sequences = [{"a.fna": DNA}, {"a.fna": DNA, "b.fna": DNA[:12]}, {"p.faa": PROTEIN}]
    batch = model.prompt_batch(questions, sequences)
    config = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    model.prefix_cache.clear()
    shared = generate_ids(model, batch, config)
    assert model.prefix_cache._entry is not None  # the shared start was cached ...
    prefix = len(model.prefix_cache._entry.key[0])
    assert prefix > 5  # ... system text and "Is there a CTCF site in"
    model.use_prefix_cache = False
    try:
        plain = generate_ids(model, batch, config)
    finally:
        model.use_prefix_cache = True
    full = generate_ids(
        model, batch, GenerationConfig(max_new_tokens=10, ignore_eos=True, use_cache=False)
    )
    assert shared == plain == full
    assert shared[0] != shared[1]  # the rows' answers differ, so the check has teeth


def test_batched_generation_matches_one_by_one(model: ChatNTModel) -> None:
    questions = ["Short @a.fna", "A considerably longer question about @b.fna, is it?"]
    sequences = [{"a.fna": DNA}, {"b.fna": DNA[:20]}]
    config = GenerationConfig(max_new_tokens=8)
    batched = generate_ids(model, model.prompt_batch(questions, sequences), config)
    single = [
        generate_ids(model, model.prompt_batch([q], [s]), config)[0]
        for q, s in zip(questions, sequences)
    ]
    assert batched == single


def test_temperature_sampling_is_seeded(model: ChatNTModel) -> None:
    answers = [
        model.generate(["Tell me about @a.fna"], [{"a.fna": DNA}], temperature=1.5, seed=7)
        for _ in range(2)
    ]
    assert answers[0] == answers[1]


def test_several_modalities_route_to_their_encoders(
    model: ChatNTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[Modality, list[str]] = {}
    for cache in model.encoding_caches.values():
        cache.clear()  # earlier tests filled the model's own cache
    for modality in model.modalities:
        encoder = model.encoder(modality)
        original = encoder.encode

        def spy(sequences: list[str], _m: Modality = modality, _f: Any = original) -> Any:
            seen.setdefault(_m, []).extend(sequences)
            return _f(sequences)

        monkeypatch.setattr(encoder, "encode", spy)
    model.generate(
        ["Do @a.fna, @b.frn and @c.faa and @a.fna again interact?"],
        [{"a.fna": DNA, "b.frn": RNA, "c.faa": PROTEIN}],
        max_new_tokens=2,
    )
    assert seen == {Modality.DNA: [DNA], Modality.RNA: [RNA], Modality.PROTEIN: [PROTEIN]}


def test_chat_session_encodes_each_sequence_once(
    model: ChatNTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    model.encoding_caches[Modality.DNA].clear()
    encoder = model.encoder(Modality.DNA)
    original = encoder.encode

    def spy(sequences: list[str]) -> Any:
        calls.append(list(sequences))
        return original(sequences)

    monkeypatch.setattr(encoder, "encode", spy)
    session = ChatSession(model, GenerationConfig(max_new_tokens=3))
    session.ask("What is @a.fna?", {"a.fna": DNA})
    session.ask("And is @a.fna GC-rich?")
    session.ask("Compare @a.fna with @b.fna", {"b.fna": DNA[::-1]})
    assert calls == [[DNA], [DNA[::-1]]]
    assert len(session.turns) == 3 and session.cache_size == 2


def test_chat_session_refuses_rebinding_a_name(model: ChatNTModel) -> None:
    session = ChatSession(model, GenerationConfig(max_new_tokens=1))
    session.ask("What is @a.fna?", {"a.fna": DNA})
    with pytest.raises(PromptError, match="already names another sequence"):
        session.ask("And @a.fna?", {"a.fna": "ACGT"})


def test_prompt_too_long_for_decoder_context() -> None:
    data = tiny_config(max_context=300)
    model = ChatNTModel.from_config(parse_config(data))
    tags = " ".join(f"@s{i}.fna" for i in range(40))
    with pytest.raises(PromptTooLongError, match=r"40 tags x K=8.*holds 300"):
        model.prompt_batch([f"Compare {tags}"], [{f"s{i}.fna": DNA for i in range(40)}])


CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_pretrained_decoder_from_a_local_directory(tmp_path: Path) -> None:
    directory = save_tiny_llama(tmp_path / "llama", chat_template=CHATML)
    data = tiny_config()
    data["decoder"]["params"] = {"path": str(directory)}
    data["prompt"] = {"template": "native", "system_prompt": "You read DNA."}
    model = ChatNTModel.from_config(parse_config(data)).eval()
    example = Example(
        [Turn("Is @a.fna a promoter?", "yes"), Turn("Why @a.fna?", "TATA box")],
        {"a.fna": SequenceInput("a.fna", DNA)},
    )
    batch = model.tokenize([example])
    text = model.decoder.detokenize(batch.input_ids[0].tolist())
    assert "<|system|>You read DNA." in model.decoder.tokenizer.decode(batch.input_ids[0].tolist())
    assert "Is  a promoter?" in text  # the placeholder (special) is skipped when decoding
    answers = model.decoder.tokenizer.decode(batch.labels[batch.labels != IGNORE_INDEX].tolist())
    assert answers == "yes</s>TATA box</s>"
    out = model.generate(["Is @a.fna a promoter?"], [{"a.fna": DNA}], max_new_tokens=3)
    assert isinstance(out[0], str)


def test_projection_can_read_the_question_through_the_decoder_embeddings() -> None:
    data = tiny_config()
    data["encoders"]["dna"]["projection"]["params"]["question_embeddings"] = "decoder"
    model = ChatNTModel.from_config(parse_config(data)).eval()
    projection = model.projection(Modality.DNA)
    assert projection.question_source == "decoder"
    assert not any("embed" in name for name, _ in projection.named_parameters())
    batch = model.prompt_batch(["Is @a.fna GC-rich?"], [{"a.fna": DNA}])
    other = model.prompt_batch(["Does @a.fna hold a CTCF site?"], [{"a.fna": DNA}])
    with torch.no_grad():
        first, second = model.project_occurrences(batch), model.project_occurrences(other)
    assert first.shape == (1, model.num_latents, model.decoder.hidden_size)
    assert not torch.allclose(first, second)  # the question steers the projection


def test_cli_generate_answers_and_reports_prompt_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fasta = tmp_path / "p.fa"
    fasta.write_text(">promoter\nTATAAAAG\nGCGCGC\n")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "generate",
                "tiny-random",
                "Is @p.fna a promoter?",
                "--seq",
                f"p.fna={fasta}",
                "--max-new-tokens",
                "3",
            ]
        )
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "answered in" in captured.err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "tiny-random", "Is @p.fna a promoter?", "--seq", "q.fna=ACGT"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: @p.fna has no sequence") and err.count("\n") == 1


def test_ignore_eos_runs_to_max_new_tokens(model: ChatNTModel) -> None:
    batch = model.prompt_batch(["Hi @a.fna"], [{"a.fna": DNA}])
    eos = model.decoder.eos_token_id
    forced = generate_ids(model, batch, GenerationConfig(max_new_tokens=6, ignore_eos=True))
    assert len(forced[0]) == 6
    normal = generate_ids(model, batch, GenerationConfig(max_new_tokens=6))
    assert normal[0] == forced[0][: len(normal[0])]
    assert len(normal[0]) == 6 or forced[0][len(normal[0])] == eos


def test_assembly_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = ChatNTModel.from_config("tiny-random")
    assert torch.equal(torch.rand(1), expected_next)
    second = ChatNTModel.from_config("tiny-random")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    data = tiny_config()
    data["seed"] = 1
    other = ChatNTModel.from_config(parse_config(data))
    latents = [k for k in first.state_dict() if k.endswith("latents")]
    assert not torch.equal(first.state_dict()[latents[0]], other.state_dict()[latents[0]])


def test_rows_that_stop_early_leave_the_batch_without_changing_any_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows stop at different steps (the stop tokens are picked from a first run), so the
    decoding batch shrinks twice; the tokens equal the uncached run's and one-by-one runs."""
    import chatnt_core.inference.generation as generation

    model = sharp_tiny_model()
    questions = ["Is @a.fna GC-rich?", "Hi", "Is there a CTCF site in @b.fna?", "Why @a.fna?"]
    sequences = [{"a.fna": DNA}, {}, {"b.fna": DNA[:12]}, {"a.fna": DNA[3:]}]
    batch = model.prompt_batch(questions, sequences)
    free = generate_ids(model, batch, GenerationConfig(max_new_tokens=10, ignore_eos=True))
    stops = (free[0][1], free[2][4])
    config = GenerationConfig(max_new_tokens=10, ignore_eos=True, stop_token_ids=stops)
    shrinks: list[int] = []
    select = generation.select_cache_rows
    monkeypatch.setattr(
        generation,
        "select_cache_rows",
        lambda past, index: shrinks.append(len(index)) or select(past, index),
    )
    cached = generate_ids(model, batch, config)
    full = generate_ids(model, batch, dataclasses.replace(config, use_cache=False))
    single = [
        generate_ids(model, model.prompt_batch([q], [s]), config)[0]
        for q, s in zip(questions, sequences)
    ]
    assert cached == full == single
    assert shrinks  # the batch did shrink ...
    assert sorted(len(row) for row in cached) != [10] * 4  # ... because rows stopped early
