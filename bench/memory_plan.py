"""Memory per GPU of the paper's assembly (NT-v2 500M + English-aware Perceiver + frozen
Vicuna-7B, fp32 as in the paper) under DDP and FSDP, to pick a setup before renting GPUs.

    python bench/memory_plan.py                      # 8 GPUs, the paper's budget
    python bench/memory_plan.py --gpus 4 --micro-batch 2 --dna-tokens 1024

Nothing here is a guess that could be measured instead:

* parameter counts come from the real modules (this project's NT-v2 and Perceiver,
  transformers' Llama with Vicuna-7B's config) built on the ``meta`` device;
* activation bytes per token come from one real layer of each (a Vicuna-7B decoder layer,
  frozen, and an NT-v2 500M layer, trainable) run forward on CPU for ``--probe-tokens``
  tokens, counting every tensor autograd saves for the backward pass (parameters and
  shared storage counted once and left out). The decoder is frozen but still
  back-propagates to the projected vectors, so it saves what its input gradient needs.

The rest is arithmetic, printed with the table: Adam holds two fp32 states per trainable
parameter; DDP replicates everything; FSDP divides weights, gradients and Adam states by
the GPU count and adds, transiently, one unit's gathered weights (the largest layer).
During gradient accumulation the trainer keeps FSDP's gradients unsharded until the last
micro-batch (``no_sync``), so the trainable parts' full gradients are counted under FSDP
too. Activations are for one micro-batch (``--micro-batch`` samples of ``--dna-tokens``
encoder tokens and the paper's 256 decoder tokens: 65,536 tokens per update = 256
samples); with ``gradient_checkpointing`` the decoder keeps each layer's input and one
layer's activations, while the NT-v2 encoder (its plugin has no checkpointing) keeps all.
DDP's all-reduce buckets hold a second copy of the gradients (Accelerate's default
``gradient_as_bucket_view=False``).
CUDA context, allocator fragmentation and the logits (answer positions only) are not
counted: keep ~10% headroom.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

GIB = 2**30
FP32 = 4


def vicuna_7b_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=2048,
    )


def parts() -> dict[str, tuple[int, int, int]]:
    """name -> (parameters, largest layer's parameters, layers), from real modules on meta."""
    from transformers import LlamaForCausalLM

    from chatnt_core.projections.perceiver import EnglishAwarePerceiver
    from chatnt_nt.model import PRESETS, NTv2Model

    with torch.device("meta"):
        decoder = LlamaForCausalLM(vicuna_7b_config())
        encoder = NTv2Model(PRESETS["500m"])
        projection = EnglishAwarePerceiver(
            1024, 4096, 64, num_layers=3, num_heads=32, head_dim=128, ffn_dim=11008,
            question_source="own", question_vocab_size=32000,
        )  # fmt: skip

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def layers(module: nn.Module) -> list[nn.Module]:
        lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
        return list(max(lists, key=len)) if lists else [module]

    return {
        name: (count(m), max(count(layer) for layer in layers(m)), len(layers(m)))
        for name, m in (("decoder", decoder), ("encoder", encoder), ("projection", projection))
    }


def saved_bytes(run: Any, exclude: set[int]) -> int:
    """Bytes of the tensors autograd saves while ``run()`` executes (each storage once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def decoder_layer_bytes_per_token(tokens: int) -> float:
    """Saved bytes per token of one frozen Vicuna-7B layer (input requires grad)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = vicuna_7b_config()
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, layer_idx=0).requires_grad_(False)
    x = torch.randn(1, tokens, config.hidden_size, requires_grad=True)
    positions = torch.arange(tokens)[None]
    rotary = LlamaRotaryEmbedding(config)(x, positions)
    exclude = {p.untyped_storage().data_ptr() for p in layer.parameters()}

    def run() -> None:
        layer(x, attention_mask=None, position_ids=positions, position_embeddings=rotary)

    return saved_bytes(run, exclude) / tokens


def encoder_layer_bytes_per_token(tokens: int) -> float:
    """Saved bytes per token of one trainable NT-v2 500M layer, run through the model."""
    from chatnt_nt.model import PRESETS, NTv2Model

    config = PRESETS["500m"]
    one_layer = NTv2Model(type(config)(config.hidden_size, config.intermediate_size, 1, 16))
    two_layers = NTv2Model(type(config)(config.hidden_size, config.intermediate_size, 2, 16))
    ids = torch.randint(5, 4000, (1, tokens))
    mask = torch.ones(1, tokens, dtype=torch.bool)
    sizes = []
    for model in (one_layer, two_layers):
        exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
        sizes.append(saved_bytes(lambda m=model: m(ids, mask), exclude))
    return (sizes[1] - sizes[0]) / tokens  # one layer's share, embeddings and head removed


def plan(args: argparse.Namespace) -> None:
    counts = parts()
    started = time.perf_counter()
    dec_token = decoder_layer_bytes_per_token(args.probe_tokens)
    enc_token = encoder_layer_bytes_per_token(args.probe_tokens)
    probe_s = time.perf_counter() - started
    decoder, encoder, projection = counts["decoder"], counts["encoder"], counts["projection"]
    trainable = encoder[0] + projection[0]
    n = args.gpus
    print(f"parameters: decoder {decoder[0] / 1e9:.3f} B (frozen, {decoder[2]} layers), "
          f"encoder {encoder[0] / 1e6:.1f} M ({encoder[2]} layers), projection "
          f"{projection[0] / 1e6:.1f} M; trainable {trainable / 1e6:.1f} M")  # fmt: skip
    print(f"saved activations per token and layer (measured, {args.probe_tokens} tokens, "
          f"{probe_s:.0f} s): decoder {dec_token / 1024:.1f} KiB, encoder "
          f"{enc_token / 1024:.1f} KiB")  # fmt: skip
    dec_tokens = args.micro_batch * args.decoder_tokens
    enc_tokens = args.micro_batch * args.dna_tokens
    activations = dec_tokens * decoder[2] * dec_token + enc_tokens * encoder[2] * enc_token
    # the decoder checkpoints through Hugging Face (each layer's input kept, one layer
    # recomputed at a time); the NT-v2 plugin offers no checkpointing, so it keeps all
    encoder_activations = enc_tokens * encoder[2] * enc_token
    checkpointed = (
        dec_tokens * decoder[2] * 4096 * FP32 + dec_tokens * dec_token + encoder_activations
    )
    largest_unit = max(decoder[1], encoder[1], projection[1]) * FP32
    rows = {
        "frozen decoder weights": (decoder[0] * FP32, decoder[0] * FP32 / n),
        "trainable weights (encoder + projection)": (trainable * FP32, trainable * FP32 / n),
        "gradients (trainable)": (trainable * FP32, trainable * FP32),
        "DDP gradient buckets (a second copy)": (trainable * FP32, 0.0),
        "Adam states (2 per trainable parameter)": (2 * trainable * FP32, 2 * trainable * FP32 / n),
        "gathered unit in flight (FSDP)": (0.0, 2 * largest_unit),
        f"activations, micro-batch of {args.micro_batch}": (activations, activations),
        "activations with decoder checkpointing": (checkpointed, checkpointed),
    }
    print(f"\n| per GPU ({n} GPUs, fp32) | DDP (GiB) | FSDP (GiB) |\n| --- | --- | --- |")
    for name, (ddp, fsdp) in rows.items():
        print(f"| {name} | {ddp / GIB:.1f} | {fsdp / GIB:.1f} |")
    for label, act in (("without", activations), ("with", checkpointed)):
        keys = [k for k in rows if not k.startswith("activations")]
        ddp = sum(rows[k][0] for k in keys) + act
        fsdp = sum(rows[k][1] for k in keys) + act
        print(f"| **total, {label} checkpointing** | **{ddp / GIB:.1f}** | **{fsdp / GIB:.1f}** |")
    whole = (decoder[0] + trainable) * FP32
    print(f"\nhost RAM: every process builds the whole model before it is sharded (or "
          f"replicated): {whole / GIB:.1f} GiB per process, {n * whole / GIB:.0f} GiB for "
          f"{n} processes on one machine")  # fmt: skip
    print(f"micro-batch: {args.micro_batch} x ({args.decoder_tokens} decoder + "
          f"{args.dna_tokens} DNA tokens); per GPU and update the paper's 65,536 tokens are "
          f"{65536 // n:,} decoder tokens = {65536 // n // args.decoder_tokens} samples, so "
          f"{65536 // n // args.decoder_tokens // args.micro_batch} micro-batches")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=1, help="samples per forward")
    parser.add_argument("--decoder-tokens", type=int, default=256, help="per sample (paper)")
    parser.add_argument("--dna-tokens", type=int, default=2048, help="per sample (paper pads)")
    parser.add_argument("--probe-tokens", type=int, default=256)
    plan(parser.parse_args())


if __name__ == "__main__":
    main()
