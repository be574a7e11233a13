"""The built-in projections: shapes, padding invariance, question use, gradients, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from pydantic import ValidationError

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
from chatnt_core.projections.attention import MaskedCrossAttention
from chatnt_core.projections.mlp import chunk_mean_weights
from chatnt_core.projections.perceiver import (
    PerceiverLayer,
    RunningStandardize,
    build_english_aware_perceiver,
)

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
    return torch.cat([x, junk], 1), torch.cat(
        [mask, torch.zeros(x.shape[0], extra, dtype=torch.bool)], 1
    )


def inputs(batch: int = 3, n: int = 10, q: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [n - 3 * i % n for i in range(batch)]
    return {
        "seq": torch.randn(batch, n, D_ENC, generator=g),
        "seq_mask": lengths_mask(lengths, n),
        "q": torch.randn(batch, q, D, generator=g),
        "q_mask": lengths_mask([q - i % q for i in range(batch)], q),
    }


def reference_attention(
    attn: MaskedCrossAttention, query: torch.Tensor, kv: torch.Tensor
) -> torch.Tensor:
    """Unbatched, unmasked multi-head attention written out by hand: (Lq, D), (Lk, D)."""
    h, dh = attn.num_heads, attn.head_dim
    q = attn.q_proj(query).view(-1, h, dh).transpose(0, 1)  # (H, Lq, Dh)
    k = attn.k_proj(kv).view(-1, h, dh).transpose(0, 1)  # (H, Lk, Dh)
    v = attn.v_proj(kv).view(-1, h, dh).transpose(0, 1)  # (H, Lk, Dh)
    weights = torch.softmax(q @ k.transpose(1, 2) / dh**0.5, dim=-1)  # (H, Lq, Lk)
    return attn.out_proj((weights @ v).transpose(0, 1).reshape(-1, h * dh))  # (Lq, D)


def reference_perceiver(p: Projection, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The spec re-derived row by row on the real tokens only (no masks, no batching)."""
    assert isinstance(p, (PerceiverResampler, EnglishAwarePerceiver))
    rows: list[torch.Tensor] = []
    for b in range(x["seq"].shape[0]):
        seq = p.input_proj(x["seq"][b][x["seq_mask"][b]])  # (n, D)
        question = x["q"][b][x["q_mask"][b]]  # (q, D)
        latents = p.latents  # (K, D)
        for layer in p.layers:
            assert isinstance(layer, PerceiverLayer)
            x_in = latents
            y = x_in + reference_attention(
                layer.attn_seq, layer.norm_seq(x_in), torch.cat([seq, x_in])
            )
            if p.uses_question:
                assert layer.attn_question is not None and layer.norm_question is not None
                y = y + reference_attention(
                    layer.attn_question, layer.norm_question(y), torch.cat([question, x_in])
                )
            hidden = layer.fc1(layer.norm_ffn(y))
            hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact GELU
            latents = y + layer.fc2(hidden)
        rows.append(latents)
    return torch.stack(rows)  # (B, K, D)


def reference_mlp(p: MLPProjection, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Chunk means over the real tokens with Python integer bounds, then the MLP."""
    rows = []
    for b in range(x["seq"].shape[0]):
        real = x["seq"][b][x["seq_mask"][b]]  # (n, D_enc)
        n, k = real.shape[0], p.num_latents
        chunks = []
        for i in range(k):
            start = i * n // k
            end = min(max((i + 1) * n // k, start + 1), n)
            chunks.append(real[start:end].mean(0))
        rows.append(p.fc2(p.act(p.fc1(torch.stack(chunks)))))
    return torch.stack(rows)  # (B, K, D)


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
@pytest.mark.parametrize("num_latents", [4, 8, 13])  # 13 > n for the shorter rows
def test_matches_reference(name: str, num_latents: int) -> None:
    p, x = make(name, num_latents), inputs(batch=3, n=12, q=5)
    with torch.no_grad():
        expected = (
            reference_mlp(p, x) if isinstance(p, MLPProjection) else reference_perceiver(p, x)
        )
    assert (run(p, x) - expected).abs().max() < 1e-5


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
    x["seq_mask"] = torch.cat(
        [torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)], 1
    )
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
    table_grad = p.question_table.weight.grad
    for grad in (p.latents.grad, p.input_proj.weight.grad, table_grad):
        assert grad is not None and grad.abs().sum() > 0
    assert table_grad is not None
    # Padding question ids get no gradient: only real tokens were read.
    pad_ids = set(ids[~x["q_mask"]].tolist()) - set(ids[x["q_mask"]].tolist())
    for token in pad_ids:
        assert table_grad[token].abs().sum() == 0


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
    layer = p.layers[0]
    assert isinstance(layer, PerceiverLayer)
    attn = layer.attn_seq
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


@pytest.mark.parametrize("name", ALL)
def test_nan_in_padding_does_not_leak(name: str) -> None:
    p, x = make(name), inputs()
    base = run(p, x)
    x["seq"] = x["seq"].masked_fill(~x["seq_mask"][..., None], float("nan"))
    x["q"] = x["q"].masked_fill(~x["q_mask"][..., None], float("nan"))
    assert (run(p, x) - base).abs().max() < 1e-5


def test_question_mask_defaults_to_all_real_and_may_be_all_padding() -> None:
    p, x = make("english-aware-perceiver"), inputs()
    with torch.no_grad():
        full = p(x["seq"], x["seq_mask"], x["q"], torch.ones_like(x["q_mask"]))
        assert torch.equal(p(x["seq"], x["seq_mask"], x["q"]), full)
        empty = p(x["seq"], x["seq_mask"], x["q"], torch.zeros_like(x["q_mask"]))
        no_question = p(x["seq"], x["seq_mask"], x["q"][:, :0], x["q_mask"][:, :0])
    assert torch.isfinite(empty).all()
    assert (empty - no_question).abs().max() < 1e-5


def test_vocabulary_output_keeps_free_vectors_and_saves_its_words() -> None:
    proj = EnglishAwarePerceiver(
        8, 16, 3, num_layers=1, num_heads=2, question_source="decoder",
        summary=True, word_output="mixture",
    )  # fmt: skip
    assert proj.outputs_words  # the model swaps in words; the projection returns vectors
    assert proj.word_vocabulary() is None  # no words chosen yet: the whole vocabulary
    seq, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    question, qmask = torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.bool)
    assert proj(seq, mask, question, qmask).shape == (2, 3, 16)
    proj.set_word_vocabulary([9, 4, 4, 7])
    assert proj.word_vocabulary().tolist() == [4, 7, 9]  # type: ignore[union-attr]
    # a fresh projection (empty vocabulary) loads a saved one of any length
    fresh = EnglishAwarePerceiver(
        8, 16, 3, num_layers=1, num_heads=2, question_source="decoder",
        summary=True, word_output="mixture",
    )  # fmt: skip
    fresh.load_state_dict(proj.state_dict())
    assert fresh.word_vocabulary().tolist() == [4, 7, 9]  # type: ignore[union-attr]
    context = BuildContext(input_dim=8, output_dim=16, num_latents=3, question_vocab_size=10)
    built = build_english_aware_perceiver(
        EnglishAwarePerceiverParams(question_embeddings="decoder", vocabulary_output=True),
        context,
    )
    assert built.word_output == "argmax"  # true means argmax, false off
    with pytest.raises(ValidationError):
        EnglishAwarePerceiverParams(vocabulary_output="nearest")  # type: ignore[arg-type]
    # running standardisation accepts one row and uses its statistics at eval time
    norm = RunningStandardize(3)
    norm(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    centre = norm.eval()(torch.tensor([[2.0, 2.0, 2.0]]))
    assert torch.allclose(centre, torch.zeros(1, 3), atol=1e-3)
    assert norm.train()(torch.ones(1, 3)).shape == (1, 3)
