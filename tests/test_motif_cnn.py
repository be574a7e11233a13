"""The ``motif-cnn`` encoder (plugin ``char-encoder``) and the ``mlp`` projection's max pooling."""

from __future__ import annotations

import pytest
import torch

from chatnt_char_encoder import MotifCNNEncoder, MotifCNNParams
from chatnt_core.errors import ConfigError
from chatnt_core.modality import Modality
from chatnt_core.normalization import MaskedBatchNorm
from chatnt_core.plugins import BuildContext, ComponentKind, get_registry
from chatnt_core.projections.mlp import MLPProjection

COMPLEMENT = str.maketrans("ACGT", "TGCA")


def encoder(**params: object) -> MotifCNNEncoder:
    return MotifCNNEncoder("dna", MotifCNNParams(hidden_size=8, kernel_size=5, **params)).eval()


def test_registered_under_the_char_encoder_plugin() -> None:
    entry = get_registry().get(ComponentKind.ENCODER, "motif-cnn")
    assert entry.plugin == "char-encoder"
    built = entry.build(MotifCNNParams(hidden_size=4), BuildContext(modality=Modality.DNA))
    assert isinstance(built, MotifCNNEncoder) and built.embed_dim == 4


def test_both_strands_reads_a_sequence_and_its_reverse_complement_alike() -> None:
    model = encoder(both_strands=True)
    forward = "ACGTTGCAAGGCTTAACG"
    reverse = forward.translate(COMPLEMENT)[::-1]
    with torch.no_grad():
        a = model.encode([forward]).embeddings[0]  # (N, D)
        b = model.encode([reverse]).embeddings[0]
    torch.testing.assert_close(a, b.flip(0))


def test_one_strand_does_not_have_that_symmetry() -> None:
    model = encoder(both_strands=False)
    forward = "ACGTTGCAAGGCTTAACG"
    reverse = forward.translate(COMPLEMENT)[::-1]
    with torch.no_grad():
        a = model.encode([forward]).embeddings[0]
        b = model.encode([reverse]).embeddings[0]
    assert not torch.allclose(a, b.flip(0))


def test_both_strands_in_a_padded_batch_matches_each_sequence_alone() -> None:
    model = encoder(both_strands=True)
    short, long = "ACGTTGCA", "TTGACCGTAGGCATCGAT"
    with torch.no_grad():
        batch = model.encode([short, long])
        alone = model.encode([short])
    torch.testing.assert_close(batch.embeddings[0, : len(short)], alone.embeddings[0])
    assert torch.equal(batch.embeddings[0, len(short) :], torch.zeros(10, 8))


def test_both_strands_is_dna_only() -> None:
    with pytest.raises(ConfigError, match="DNA only"):
        MotifCNNEncoder("protein", MotifCNNParams(both_strands=True))


def test_even_kernel_is_rejected() -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        MotifCNNParams(kernel_size=18)


def test_batch_norm_learns_running_statistics_and_eval_ignores_the_batch() -> None:
    model = encoder().train()
    assert model.norm is not None
    before = model.norm.running_mean.clone()
    model.encode(["ACGTACGTAAAACCCC", "GGGGTTTT"])
    assert not torch.equal(model.norm.running_mean, before)
    model.eval()
    with torch.no_grad():
        alone = model.encode(["ACGTAC"]).embeddings[0]
        mixed = model.encode(["ACGTAC", "TTTTTTTTTTTTTTT"]).embeddings[0, :6]
    torch.testing.assert_close(alone, mixed)


def test_outputs_are_non_negative_matches() -> None:
    with torch.no_grad():
        out = encoder().encode(["ACGTNNACGT"]).embeddings
    assert bool((out >= 0).all()) and bool((out > 0).any())


def test_max_pooling_takes_each_chunks_maximum_over_real_tokens_only() -> None:
    projection = MLPProjection(input_dim=1, output_dim=1, num_latents=2, pooling="max")
    seen: list[torch.Tensor] = []
    projection.fc1.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    embeddings = torch.tensor([[1.0, 5.0, 2.0, 3.0, 99.0], [-4.0, -2.0, -1.0, -3.0, 7.0]])
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    projection(embeddings[..., None], mask)
    pooled = seen[0][..., 0]  # (B, K)
    # Row 0: 4 real tokens -> chunks [1, 5] and [2, 3]; the padded 99 takes no part.
    # Row 1: 5 real tokens -> chunks [-4, -2] and [-1, -3, 7].
    assert pooled.tolist() == [[5.0, 3.0], [-2.0, 7.0]]


def test_normalize_output_standardises_each_channel_over_the_batch() -> None:
    torch.manual_seed(0)
    projection = MLPProjection(input_dim=3, output_dim=5, num_latents=2, normalize_output=True)
    embeddings = 50 * torch.randn(6, 10, 3) + 4.0  # (B, N, D_enc), far from zero mean
    mask = torch.ones(6, 10, dtype=torch.bool)
    out = projection.train()(embeddings, mask).reshape(-1, 5)  # (B * K, D)
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


def test_batch_norm_with_one_row_uses_the_running_estimates() -> None:
    norm = MaskedBatchNorm(4).train()
    norm.running_mean.fill_(1.0)
    x = torch.full((1, 4), 3.0)
    out = norm(x)  # one row has no variance: standardising it would divide by ~0
    torch.testing.assert_close(out, torch.full((1, 4), 2.0), atol=1e-4, rtol=0)
    assert torch.equal(norm.running_mean, torch.ones(4))


def test_masked_rows_take_no_part_in_the_statistics() -> None:
    norm = MaskedBatchNorm(1).train()
    x = torch.tensor([[1.0], [3.0], [1000.0]])
    out = norm(x, torch.tensor([True, True, False]))
    torch.testing.assert_close(out[:2, 0], torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)


def test_mean_max_pooling_feeds_both_statistics_side_by_side() -> None:
    projection = MLPProjection(input_dim=1, output_dim=1, num_latents=1, pooling="mean_max")
    assert projection.fc1.in_features == 2
    seen: list[torch.Tensor] = []
    projection.fc1.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    embeddings = torch.tensor([[[1.0], [5.0], [3.0], [0.0]]])  # (1, 4, 1)
    projection(embeddings, torch.tensor([[True, True, True, False]]))
    assert seen[0].tolist() == [[[3.0, 5.0]]]  # mean and max of the 3 real tokens
