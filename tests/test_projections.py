"""The built-in projections: shapes, padding invariance, question use, gradients, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import chatnt_core.projections as projections_plugin
from chatnt_core.errors import ConfigError
from chatnt_core.interfaces import Projection
from chatnt_core.plugins import BuildContext, ComponentKind, collect_components, new_plugin_manager
from chatnt_core.projections import (
    EnglishAwarePerceiver,
    EnglishAwarePerceiverParams,
    MLPParams,
    MLPProjection,
    PerceiverParams,
    PerceiverResampler,
)
from chatnt_core.projections.mlp import chunk_mean_weights

D_ENC, D, K, VOCAB = 24, 32, 6, 50
ALL = ["english-aware-perceiver", "perceiver-resampler", "mlp"]


def make(name: str, num_latents: int = K) -> Projection:
    torch.manual_seed(0)
    projection: Projection
    if name == "english-aware-perceiver":
        projection = EnglishAwarePerceiver(
            D_ENC, D, num_latents, num_layers=2, num_heads=4, question_vocab_size=VOCAB
        )
    elif name == "perceiver-resampler":
        projection = PerceiverResampler(D_ENC, D, num_latents, num_layers=2, num_heads=4)
    else:
        projection = MLPProjection(D_ENC, D, num_latents, hidden_dim=40)
    return projection.eval()


def lengths_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (B, width)


def pad(x: torch.Tensor, mask: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``extra`` padding positions filled with junk, to prove they are ignored."""
    junk = torch.randn(x.shape[0], extra, x.shape[2]) * 100
    return torch.cat([x, junk], 1), torch.cat([mask, torch.zeros(x.shape[0], extra, dtype=bool)], 1)


def inputs(batch: int = 3, n: int = 10, q: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [n - 3 * i % n for i in range(batch)]
    return {
        "seq": torch.randn(batch, n, D_ENC, generator=g),
        "seq_mask": lengths_mask(lengths, n),
        "q": torch.randn(batch, q, D, generator=g),
        "q_mask": lengths_mask([q - i % q for i in range(batch)], q),
    }


def run(p: Projection, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return p(x["seq"], x["seq_mask"], x["q"], x["q_mask"])


@pytest.mark.parametrize("name", ALL)
def test_output_shape(name: str) -> None:
    p = make(name)
    assert (p.num_latents, p.output_dim) == (K, D)
    assert run(p, inputs(batch=3)).shape == (3, K, D)


@pytest.mark.parametrize("name", ALL)
def test_registered_factories_build_from_context(name: str) -> None:
    pm = new_plugin_manager()
    pm.register(projections_plugin, name="core-projections")
    registry = collect_components(pm)
    assert set(ALL) <= set(registry.names(ComponentKind.PROJECTION))
    entry = registry.get(ComponentKind.PROJECTION, name)
    params = entry.params_model.model_validate({})
    ctx = BuildContext(input_dim=D_ENC, output_dim=D, num_latents=4, question_vocab_size=VOCAB)
    p = entry.build(params, ctx).eval()
    assert isinstance(p, Projection)
    assert run(p, inputs(batch=2)).shape == (2, 4, D)
    with pytest.raises(ValueError):  # pydantic ValidationError: extra="forbid"
        entry.params_model.model_validate({"no_such_field": 1})


@pytest.mark.parametrize("name", ALL)
def test_sequence_padding_invariance(name: str) -> None:
    p, x = make(name), inputs()
    base = run(p, x)
    x["seq"], x["seq_mask"] = pad(x["seq"], x["seq_mask"], 7)
    assert (run(p, x) - base).abs().max() < 1e-5


@pytest.mark.parametrize("name", ALL)
def test_question_padding_invariance(name: str) -> None:
    p, x = make(name), inputs()
    base = run(p, x)
    x["q"], x["q_mask"] = pad(x["q"], x["q_mask"], 4)
    assert (run(p, x) - base).abs().max() < 1e-5


def test_left_padding_matches_right_padding_for_mlp() -> None:
    p, x = make("mlp"), inputs(batch=1)
    base = run(p, x)
    n = int(x["seq_mask"].sum())
    x["seq"] = torch.cat([torch.zeros(1, 4, D_ENC), x["seq"][:, :n]], 1)
    x["seq_mask"] = torch.cat([torch.zeros(1, 4, dtype=bool), torch.ones(1, n, dtype=bool)], 1)
    assert (run(p, x) - base).abs().max() < 1e-5


def test_question_changes_english_aware_output_only() -> None:
    x = inputs()
    other = dict(x, q=torch.randn_like(x["q"]))
    aware, plain = make("english-aware-perceiver"), make("perceiver-resampler")
    assert (run(aware, x) - run(aware, other)).abs().max() > 1e-3
    assert torch.equal(run(plain, x), run(plain, other))
    assert aware.uses_question and not plain.uses_question and not make("mlp").uses_question


def test_english_aware_requires_question() -> None:
    x = inputs()
    with pytest.raises(ValueError, match="question"):
        make("english-aware-perceiver")(x["seq"], x["seq_mask"])


def test_question_source_own_and_decoder() -> None:
    own = make("english-aware-perceiver")
    assert own.question_source == "own"
    ids = torch.randint(0, VOCAB, (2, 7))
    assert own.embed_question(ids).shape == (2, 7, D)
    decoder = EnglishAwarePerceiver(D_ENC, D, K, num_heads=4, question_source="decoder")
    assert decoder.question_source == "decoder"
    assert not any("question_table" in name for name, _ in decoder.named_parameters())
    with pytest.raises(NotImplementedError):
        decoder.embed_question(ids)
    params = EnglishAwarePerceiverParams(question_embeddings="decoder", num_heads=4)
    ctx = BuildContext(input_dim=D_ENC, output_dim=D, num_latents=K)  # no vocab needed
    built = projections_plugin.build_english_aware_perceiver(params, ctx)
    assert built.question_source == "decoder"


@pytest.mark.parametrize("name", ALL)
def test_batch_rows_match_single_runs(name: str) -> None:
    p, x = make(name), inputs(batch=4, n=12, q=6)
    batched = run(p, x)
    for i in range(4):
        n, q = int(x["seq_mask"][i].sum()), int(x["q_mask"][i].sum())
        single = {
            "seq": x["seq"][i : i + 1, :n],
            "seq_mask": x["seq_mask"][i : i + 1, :n],
            "q": x["q"][i : i + 1, :q],
            "q_mask": x["q_mask"][i : i + 1, :q],
        }
        assert (run(p, single)[0] - batched[i]).abs().max() < 1e-5


def test_gradients_reach_latents_input_proj_and_question_table() -> None:
    p = make("english-aware-perceiver").train()
    assert isinstance(p, EnglishAwarePerceiver) and p.question_table is not None
    x = inputs()
    ids = torch.randint(0, VOCAB, x["q_mask"].shape)
    out = p(x["seq"], x["seq_mask"], p.embed_question(ids), x["q_mask"])
    out.pow(2).mean().backward()
    for grad in (p.latents.grad, p.input_proj.weight.grad, p.question_table.weight.grad):
        assert grad is not None and grad.abs().sum() > 0
    # Padding question ids get no gradient: only real tokens were read.
    pad_ids = set(ids[~x["q_mask"]].tolist()) - set(ids[x["q_mask"]].tolist())
    for token in pad_ids:
        assert p.question_table.weight.grad[token].abs().sum() == 0


@pytest.mark.parametrize(
    "ctx",
    [
        BuildContext(output_dim=D, num_latents=K, question_vocab_size=VOCAB),
        BuildContext(input_dim=D_ENC, num_latents=K, question_vocab_size=VOCAB),
        BuildContext(input_dim=D_ENC, output_dim=D, question_vocab_size=VOCAB),
        BuildContext(input_dim=D_ENC, output_dim=D, num_latents=0, question_vocab_size=VOCAB),
    ],
)
def test_bad_context_raises(ctx: BuildContext) -> None:
    builders: list[tuple[Callable[..., Projection], object]] = [
        (projections_plugin.build_english_aware_perceiver, EnglishAwarePerceiverParams()),
        (projections_plugin.build_perceiver_resampler, PerceiverParams()),
        (projections_plugin.build_mlp_projection, MLPParams()),
    ]
    for build, params in builders:
        with pytest.raises(ConfigError, match="projection"):
            build(params, ctx)


def test_own_question_table_needs_vocab_size() -> None:
    ctx = BuildContext(input_dim=D_ENC, output_dim=D, num_latents=K)
    with pytest.raises(ConfigError, match="question_vocab_size"):
        projections_plugin.build_english_aware_perceiver(EnglishAwarePerceiverParams(), ctx)


@pytest.mark.parametrize("name", ALL)
def test_all_padding_row_raises(name: str) -> None:
    x = inputs()
    x["seq_mask"][1] = False
    with pytest.raises(ValueError, match=r"all padding in batch row\(s\) \[1\]"):
        run(make(name), x)


def test_head_dim_must_divide_unless_given() -> None:
    with pytest.raises(ConfigError, match="head_dim"):
        PerceiverResampler(D_ENC, D, K, num_heads=5)
    with pytest.raises(ConfigError, match="head_dim"):
        EnglishAwarePerceiver(D_ENC, D, K, num_heads=5, question_vocab_size=VOCAB)
    p = PerceiverResampler(D_ENC, D, K, num_layers=1, num_heads=5, head_dim=8).eval()
    attn = p.layers[0].attn_seq
    assert attn.q_proj.out_features == 40 and attn.out_proj.out_features == D
    assert run(p, inputs()).shape == (3, K, D)


def test_latent_init_is_truncated_normal() -> None:
    p = PerceiverResampler(D_ENC, 256, 64, num_heads=4)
    std = 1 / 256**0.5
    assert p.latents.abs().max() <= 2 * std + 1e-6
    assert 0.6 * std < p.latents.std() < 1.0 * std


def test_chunk_weights_cover_real_tokens_without_empty_chunks() -> None:
    mask = torch.tensor([[True] * 10, [True] * 2 + [False] * 8, [False] * 3 + [True] * 7])
    w = chunk_mean_weights(mask, 4)  # (3, 4, 10)
    assert torch.allclose(w.sum(-1), torch.ones(3, 4))  # every chunk is a mean, none empty
    assert (w[~mask[:, None, :].expand_as(w)] == 0).all()  # padding never weighted
    # n=10, K=4: chunks [0,2) [2,5) [5,7) [7,10).
    assert w[0].gt(0).sum(-1).tolist() == [2, 3, 2, 3]
    # n=2 < K=4: each chunk holds one token, tokens repeat.
    assert w[1].argmax(-1).tolist() == [0, 0, 1, 1]
    # Left padding: the same chunks, shifted past the padding.
    assert w[2, 0].nonzero().flatten().tolist() == [3]
