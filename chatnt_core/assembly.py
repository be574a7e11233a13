"""Builders: a resolved config becomes live components, built by their plugins' factories.

Order matters: the decoder first (its width and vocabulary size the projections need),
then each encoder, then each projection sized from the encoder and the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chatnt_core.config import ResolvedComponent, ResolvedConfig
from chatnt_core.errors import PluginError
from chatnt_core.interfaces import Decoder, Encoder, Projection
from chatnt_core.modality import Modality
from chatnt_core.plugins import BuildContext, PluginRegistry, get_registry


@dataclass
class Components:
    encoders: dict[Modality, Encoder]
    projections: dict[Modality, Projection]
    decoder: Decoder


def _build(
    part: ResolvedComponent,
    context: BuildContext,
    expected: type[nn.Module],
    registry: PluginRegistry,
) -> nn.Module:
    entry = registry.get(part.kind, part.config.name)
    built = entry.build(part.params, context)
    if not isinstance(built, expected):
        raise PluginError(
            f"{part.path}: plugin '{entry.plugin}' built a {type(built).__name__} for "
            f"'{entry.name}', not a {expected.__name__}; its factory must return one"
        )
    built.requires_grad_(part.config.trainable)
    return built


def build_components(
    resolved: ResolvedConfig, registry: PluginRegistry | None = None
) -> Components:
    """Call each factory with its validated params; freeze what the config freezes.

    Built under ``config.seed`` (the caller's RNG state is restored afterwards), so the same
    config gives the same random weights in every process - what data-parallel training and
    sharded batch inference need.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(resolved.config.seed)
        return _build_all(resolved, registry or get_registry())


def _build_all(resolved: ResolvedConfig, registry: PluginRegistry) -> Components:
    decoder = _build(resolved.decoder, BuildContext(), Decoder, registry)
    assert isinstance(decoder, Decoder)
    num_latents = resolved.config.num_latents
    encoders: dict[Modality, Encoder] = {}
    projections: dict[Modality, Projection] = {}
    for modality, part in resolved.encoders.items():
        encoder = _build(part, BuildContext(modality=modality), Encoder, registry)
        assert isinstance(encoder, Encoder)
        if encoder.modality != modality:
            raise PluginError(
                f"{part.path}: encoder '{part.config.name}' encodes {encoder.modality.value}, "
                f"not {modality.value}; move it under 'encoders.{encoder.modality.value}'"
            )
        context = BuildContext(
            modality=modality,
            input_dim=encoder.embed_dim,
            output_dim=decoder.hidden_size,
            num_latents=num_latents,
            question_vocab_size=decoder.tokenizer_size,
            embedding_rms=embedding_rms(decoder),
        )
        projection = _build(resolved.projections[modality], context, Projection, registry)
        assert isinstance(projection, Projection)
        if projection.num_latents != num_latents or projection.output_dim != decoder.hidden_size:
            raise PluginError(
                f"{resolved.projections[modality].path}: the projection returns "
                f"({projection.num_latents}, {projection.output_dim}) vectors per sequence, "
                f"the model needs ({num_latents}, {decoder.hidden_size})"
            )
        encoders[modality] = encoder
        projections[modality] = projection
    return Components(encoders, projections, decoder)


def embedding_rms(decoder: Decoder) -> float:
    """RMS of the decoder's token embeddings (the first 4096 ids), the scale projected
    vectors should have to look like tokens to it."""
    with torch.no_grad():
        ids = torch.arange(min(decoder.vocab_size, 4096))[None, :]  # (1, n)
        device = next(iter(decoder.parameters()), torch.empty(0)).device
        rows = decoder.embed_tokens(ids.to(device)).float()  # (1, n, D)
    return float(rows.pow(2).mean().sqrt())
