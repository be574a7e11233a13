"""``chatnt convert official-chatnt`` at logits parity with the official JAX code.

The oracle is InstaDeep's own code: ``tests/fixtures/official_chatnt/make_fixtures.py`` ran
it on a tiny random ChatNT (NT-v2 width 32, Perceiver and Llama width 64, vocabulary 100,
K = 4) and saved its logits and greedy generations. Here the same parameters go through
``chatnt convert`` and our model; every official logit row whose inputs the official index
arithmetic left intact must agree within 1e-4, and each conversion rule is shown to matter
by breaking it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from official_fixture import (
    FIXTURES,
    K,
    convert_args,
    load_case,
    official_rows,
    save_english_tokenizer,
    tagged,
)

from chatnt_core import ChatNTModel
from chatnt_core.batching import position_ids_from_mask
from chatnt_core.cli import main
from chatnt_core.convert import official_rules
from chatnt_core.inference.generation import GenerationConfig, generate_ids

TOLERANCE = 1e-4
CASES = ["case_one", "case_two"]  # one and two sequences per prompt


def convert(tmp: Path, source: Path = FIXTURES / "params.npz") -> Path:
    tokenizer = save_english_tokenizer(tmp / "english_tokenizer")
    with pytest.raises(SystemExit) as exit_info:
        main(convert_args(source, tmp / "converted", tokenizer))
    assert exit_info.value.code == 0
    return tmp / "converted"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def model(converted: Path) -> Iterator[ChatNTModel]:
    yield ChatNTModel.from_checkpoint(converted).eval()


def prompts(case: dict[str, np.ndarray], rows: list[int]) -> tuple[list[str], list[dict[str, str]]]:
    pairs = [tagged(str(case["questions"][r]), str(case["dna"][r])) for r in rows]
    return [q for q, _ in pairs], [s for _, s in pairs]


@torch.no_grad()
def logit_differences(model: ChatNTModel, name: str) -> tuple[list[float], list[int]]:
    """Max |official - ours| per compared prompt row, and how many official rows the
    official arithmetic corrupted, per prompt."""
    case = load_case(name)
    rows = list(range(len(case["questions"])))
    batch = model.prompt_batch(*prompts(case, rows))
    mask = batch.attention_mask
    logits = model.decoder(model.embed_prompt(batch), mask, position_ids_from_mask(mask)).logits
    worst: list[float] = []
    corrupted: list[int] = []
    for r in rows:
        length = int(case["prompt_lengths"][r])
        pad = int((~mask[r]).sum())
        ours = batch.input_ids[r, pad:]
        kept = ours[ours != model.decoder.placeholder_token_id].tolist()
        official = case["english_ids"][r, :length]
        assert kept == official[official != 100].tolist()  # the same prompt tokens
        mapping = official_rows(case["english_ids"][r], length)
        diff = [
            float(np.abs(case["logits"][r, j] - logits[r, pad + q].float().numpy()).max())
            for j, q in mapping.pairs
        ]
        worst.append(max(diff))
        corrupted.append(len(mapping.corrupted))
    return worst, corrupted


@pytest.mark.parametrize("name", CASES)
def test_logits_match_the_official_code(model: ChatNTModel, name: str) -> None:
    worst, corrupted = logit_differences(model, name)
    assert max(worst) <= TOLERANCE, worst
    # padded prompts: every real row compared; the prompt filling the window: the official
    # roll dropped a real row, so only the rows before it are comparable (see
    # official_fixture.official_rows), and there must still be many of them
    assert corrupted[:2] == [0, 0]
    case = load_case(name)
    assert 0 < corrupted[2] < int(case["prompt_lengths"][2]) // 2 + 10


@pytest.mark.parametrize("name", CASES)
def test_greedy_generations_match_the_official_loop(model: ChatNTModel, name: str) -> None:
    case = load_case(name)
    rows = [0, 1]  # the unpadded prompt has no pad slot: the official loop cannot generate
    batch = model.prompt_batch(*prompts(case, rows))
    steps = case["generated"].shape[1]
    ours = generate_ids(model, batch, GenerationConfig(max_new_tokens=steps))
    for r in rows:
        official = [int(t) for t in case["generated"][r] if t >= 0]
        if official and official[-1] == model.decoder.eos_token_id:
            official = official[:-1]  # ours excludes the stop token
        assert ours[r] == official


def test_the_projection_matches_the_official_vectors(model: ChatNTModel) -> None:
    case = load_case("case_two")
    batch = model.prompt_batch(*prompts(case, [0, 1, 2]))
    with torch.no_grad():
        projected = model.project_occurrences(batch)  # (O, K, D), occurrences in row order
    official = case["projected"].reshape(-1, K, projected.shape[-1])  # (B * S, K, D)
    assert np.abs(projected.numpy() - official).max() <= TOLERANCE


# ---- each conversion rule matters ------------------------------------------------------


def _worst(tmp: Path) -> float:
    broken = ChatNTModel.from_checkpoint(convert(tmp)).eval()
    return max(logit_differences(broken, "case_two")[0])


def test_without_the_qk_permutation_the_logits_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(official_rules, "interleaved_to_half_split", lambda w, heads: w)
    assert _worst(tmp_path) > 100 * TOLERANCE


def test_with_the_glu_halves_swapped_the_logits_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = official_rules.split_glu
    monkeypatch.setattr(official_rules, "split_glu", lambda w: split(w)[::-1])
    assert _worst(tmp_path) > 100 * TOLERANCE


def test_without_transposing_square_matrices_the_logits_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    linear = official_rules.linear

    def square_untransposed(w: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(w.copy()) if w.shape[0] == w.shape[1] else linear(w)

    monkeypatch.setattr(official_rules, "linear", square_untransposed)
    assert _worst(tmp_path) > 100 * TOLERANCE


@pytest.mark.parametrize(
    ("where", "eps"),
    [("final", 1e-6), ("layers", 1e-5), ("encoder", 1e-12)],
)
def test_each_epsilon_matters(converted: Path, where: str, eps: float) -> None:
    model = ChatNTModel.from_checkpoint(converted).eval()
    for name, module in model.named_modules():
        if where == "final" and name.endswith("model.norm"):
            module.variance_epsilon = eps  # type: ignore[assignment]
        if where == "layers" and name.endswith("layernorm"):
            module.variance_epsilon = eps  # type: ignore[assignment]
        if where == "encoder" and isinstance(module, torch.nn.LayerNorm) and "encoders" in name:
            module.eps = eps
    assert max(logit_differences(model, "case_two")[0]) > 10 * TOLERANCE


@pytest.mark.parametrize(
    ("field", "value"),
    [("placeholder_layout", "replace"), ("question_scope", "user_turn")],
)
def test_each_layout_option_matters(model: ChatNTModel, field: str, value: str) -> None:
    original = model.config.prompt
    model.config.prompt = original.model_copy(update={field: value})
    try:
        with torch.no_grad():
            case = load_case("case_one")
            batch = model.prompt_batch(*prompts(case, [0]))
            mask = batch.attention_mask
            embeds = model.embed_prompt(batch)
            last = model.decoder(embeds, mask, position_ids_from_mask(mask)).logits[0, -1]
    finally:
        model.config.prompt = original
    length = int(case["prompt_lengths"][0])
    official_last = case["logits"][0, length - 1]
    assert np.abs(official_last - last.numpy()).max() > 10 * TOLERANCE
