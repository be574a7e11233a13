"""The shared trainer: any assembly, any instruction data, CPU to many GPUs via Accelerate.

One update (Methods §1.2): draw samples with uniform task sampling until the token (or
sample) budget is reached, split them over the processes, cut each share into
micro-batches, accumulate gradients without synchronising until the last micro-batch,
clip, and take one Adam step. The loss of an update is the mean over *all* its answer
tokens, whichever process or micro-batch they fell in: each micro-batch contributes
``sum of its token losses * world_size / answer tokens in the update`` (DDP averages over
processes), so the gradient equals that of one big batch.

Which parameters train is the model config's business (``trainable`` per component; by
default the encoder and projection train and the decoder is frozen) plus LoRA adapters.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from chatnt_core.batching import IGNORE_INDEX, collate
from chatnt_core.config import ResolvedConfig, load_config, parse_config, resolve_config
from chatnt_core.errors import ChatNTError, ConfigError
from chatnt_core.interfaces import Encoder, Projection
from chatnt_core.model import ChatNTModel
from chatnt_core.training import anchors, sharding
from chatnt_core.training import checkpoint as ckpt
from chatnt_core.training.config import EncoderWarmupConfig, ScheduleConfig, TrainConfig
from chatnt_core.training.data import ExampleCache, TrainingData, answer_tokens
from chatnt_core.training.lora import apply_lora
from chatnt_core.training.metrics import MetricsLogger, ProgressBar
from chatnt_core.training.sampling import (
    SamplerState,
    UniformTaskSampler,
    padding_fraction,
    plan_micro_batches,
)
from chatnt_core.training.warmup import probe_tasks, warm_up_encoder

# Fields that change what a resumed run computes; a change is allowed but breaks exactness.
_PATH_FIELDS = ("data", "seed", "tokens_per_update", "samples_per_update", "optimizer")


def lr_factor(step: int, schedule: ScheduleConfig, max_steps: int | None) -> float:
    """Multiplier of the peak lr for the update with 0-based index ``step``."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.name == "constant" or max_steps is None:
        return 1.0
    span = max(1, max_steps - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / span)
    floor = schedule.min_lr_ratio
    if schedule.name == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_model(source: str | dict[str, Any]) -> ResolvedConfig:
    config = parse_config(source, "model") if isinstance(source, dict) else load_config(source)
    return resolve_config(config)


def enable_checkpointing(module: torch.nn.Module) -> bool:
    """Turn on activation checkpointing through the module's own Hugging Face style API."""
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        enable = getattr(module, name, None)
        if callable(enable):
            enable()
            return True
    return False


def build_model(config: TrainConfig, resolved: ResolvedConfig) -> ChatNTModel:
    """The model as it trains: assembled, LoRA applied, gradient checkpointing enabled."""
    model = ChatNTModel.from_config(resolved)
    if config.lora is not None:
        apply_lora(model.decoder, config.lora)
    if config.gradient_checkpointing:
        # The frozen decoder still back-propagates to the projection, so its activations
        # dominate memory; encoders are checkpointed when their plugin supports it.
        enable_checkpointing(getattr(model.decoder, "model", model.decoder))
        for encoder in model.encoders.values():
            enable_checkpointing(encoder)
    if not any(p.requires_grad for p in model.parameters()):
        raise ChatNTError(
            "nothing to train: every component is frozen; set trainable: true on an encoder "
            "or projection, or add a lora block"
        )
    return model


def _training_cards(data: TrainingData) -> dict[str, Any]:
    """Task cards of the tasks the training data holds (what warm-ups and anchors read)."""
    from chatnt_core.data.tasks import load_task_cards

    present = set(data.index.names)
    return {name: card for name, card in load_task_cards().items() if name in present}


def set_train_mode(
    model: ChatNTModel, gradient_checkpointing: bool, lr_scale: Mapping[Any, float] | None = None
) -> None:
    """Train mode for parts that learn; frozen parts stay in eval mode (no dropout), except a
    checkpointed decoder, which Hugging Face only checkpoints in train mode. A part held at
    ``lr_scale`` 0 counts as frozen: its running statistics (batch norm) stay as they are."""
    model.train()
    scales = lr_scale or {}
    parts: list[tuple[str, nn.Module]] = [
        *(("encoders", m) for m in model.encoders.values()),
        *(("projections", m) for m in model.projections.values()),
        ("decoder", model.decoder),
    ]
    for kind, part in parts:
        trains = any(p.requires_grad for p in part.parameters()) and scales.get(kind, 1.0) != 0
        if not trains and not (gradient_checkpointing and part is model.decoder):
            part.eval()


def _param_groups(model: ChatNTModel, lr_scale: Mapping[Any, float]) -> list[dict[str, Any]]:
    """Trainable parameters grouped by part (encoders, projections, decoder), each with the
    part's learning-rate multiplier; empty groups are left out."""
    groups = []
    for part in ("encoders", "projections", "decoder"):
        module = getattr(model, part)
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr_scale": float(lr_scale.get(part, 1.0))})
    return groups


@dataclass
class TrainResult:
    step: int
    loss: float | None  # the last logged loss
    output_dir: Path
    checkpoint: Path | None


class Trainer:
    """``Trainer(config, resume=DIR).train()``; every process of a launch runs the same."""

    def __init__(self, config: TrainConfig, resume: str | Path | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.config = config
        self.output_dir = Path(config.output_dir)
        multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
        sharding.check_launch()
        # bf16 is autocast (weights stay fp32), on GPUs and CPUs alike. Only CPUs with native
        # bfloat16 (AVX512-BF16, AMX) gain from it; on others it is many times slower
        # (python bench/train_throughput.py --smollm2 measures both).
        self.accelerator = Accelerator(
            cpu=multi and not torch.cuda.is_available(),
            mixed_precision="bf16" if config.precision == "bf16" else "no",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.checkpoint = ckpt.Checkpoint.open(resume) if resume is not None else None
        if self.checkpoint is None and ckpt.list_checkpoints(self.output_dir):
            raise ChatNTError(
                f"{self.output_dir} already holds checkpoints: pass --resume "
                f"{self.output_dir} to continue, or choose another output_dir"
            )
        set_seed(config.seed)
        self.resolved = resolve_model(config.model)
        self.model = build_model(config, self.resolved)
        self.data = TrainingData.load(config.data)
        self.sampler = UniformTaskSampler(self.data.index, config.seed)
        self.cache = ExampleCache(self.data, self.model)
        if config.encoder_warmup is not None and self.checkpoint is None:
            self._warm_up_encoders(config.encoder_warmup)  # a resumed run has its result
        self.anchor_cards = _training_cards(self.data) if config.label_anchors else {}
        self.anchor_table: torch.Tensor | None = None
        self.anchor_rows: dict[int, list[int] | None] = {}  # global row -> K anchor tokens
        self.anchor_vocabulary = self._anchor_vocabulary()
        anchor_warmup = config.label_anchors.warmup_steps if config.label_anchors else 0
        if anchor_warmup > 0 and self.checkpoint is None:
            self._warm_up_projections()
        self.step = 0
        self.samples_seen = 0
        self.tokens_seen = 0
        self.interval: dict[str, float] = {"loss_sum": 0.0, "answer_tokens": 0.0, "steps": 0.0}
        if self.checkpoint is not None:
            self._check_resume_config()
            ckpt.load_weights(self.model, self.checkpoint.weights(), self.checkpoint.directory)
        # FSDP: the trainer shards the model itself (training/sharding.py says why), after
        # the weights are final and before the optimizer, which must hold the shards.
        self.strategy = "fsdp" if sharding.fsdp_requested() and multi else "replicated"
        if self.strategy == "fsdp":
            units = sharding.shard_model(self.model, self.accelerator.device)
            self.accelerator.print(f"FSDP: model sharded in {units} units")
        elif sharding.fsdp_requested():
            self.accelerator.print("FSDP asked for, but this is one process: nothing to shard")
        optimizer = self._optimizer()
        if self.strategy == "fsdp":
            self.wrapped, self.optimizer = self.model, optimizer
        else:
            if self.accelerator.distributed_type.value == "DEEPSPEED":  # GPU-only, not run here
                sharding.configure_deepspeed(self.accelerator, config.micro_batch_size)
            self.wrapped, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        if self.checkpoint is not None:
            self._restore_state(self.checkpoint)

    def _optimizer(self) -> torch.optim.Optimizer:
        opt = self.config.optimizer
        optimizer_class = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        return optimizer_class(
            _param_groups(self.model, self.config.lr_scale),
            lr=opt.lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )

    # ---- encoder warm-up ------------------------------------------------------------------

    def _warm_up_encoders(self, warmup: EncoderWarmupConfig) -> None:
        """Probe-train every encoder on the training labels (see ``training/warmup.py``)."""
        cards = _training_cards(self.data)
        columns = ["task", "sequences", "label", "value"]
        for modality, encoder in self.model.encoders.items():
            if not any(p.requires_grad for p in encoder.parameters()):
                raise ConfigError(
                    f"encoder_warmup needs the {modality} encoder to be trainable (a frozen "
                    "encoder is rebuilt from its config when a checkpoint loads, so the "
                    f"warm-up would be lost): set trainable: true for {modality} or remove "
                    "encoder_warmup"
                )
            records = (r for d in self.data.datasets for r in d.select_columns(columns))
            tasks = probe_tasks(records, cards, cast(Encoder, encoder), warmup.max_per_task)
            self._warm_up_one(modality, cast(Encoder, encoder), tasks, warmup)

    def _warm_up_one(
        self, modality: str, encoder: Encoder, tasks: list[Any], warmup: EncoderWarmupConfig
    ) -> None:
        acc = self.accelerator
        encoder.to(acc.device)
        enabled = acc.is_main_process and self.config.progress
        label = f"warm-up {modality}"
        with (
            torch.random.fork_rng(devices=[]),
            ProgressBar(enabled, warmup.steps, 0, "updates", label=label) as bar,
        ):
            losses = warm_up_encoder(
                encoder,
                tasks,
                warmup,
                self.config.seed,
                acc.device,
                progress=lambda step: bar.update(step, None, None),
            )
        tail = losses[-50:]
        acc.print(
            f"warm-up of the {modality} encoder: {warmup.steps} updates on {len(tasks)} "
            f"task(s) ({', '.join(t.name for t in tasks)}), probe loss {losses[0]:.3f} -> "
            f"{sum(tail) / len(tail):.3f}"
        )

    # ---- label anchors --------------------------------------------------------------------

    def _warm_up_projections(self) -> None:
        """Projection-only updates on the anchor loss (see ``training/anchors.py``)."""
        settings = self.config.label_anchors
        assert settings is not None
        acc = self.accelerator
        self.model.to(acc.device)
        columns = ["task", "turns", "sequences", "label", "value"]
        records = (r for d in self.data.datasets for r in d.select_columns(columns))
        examples = anchors.collect_anchored(
            records, self.anchor_cards, self.model, settings.max_per_task
        )
        enabled = acc.is_main_process and self.config.progress
        steps = settings.warmup_steps
        with (
            torch.random.fork_rng(devices=[]),
            ProgressBar(enabled, steps, 0, "updates", label="label anchors") as bar,
        ):
            losses = anchors.warm_up_projections(
                self.model,
                examples,
                settings,
                self.config.seed,
                progress=lambda step: bar.update(step, None, None),
                vocabulary=self.anchor_vocabulary,
            )
        tail = losses[-20:]
        acc.print(
            f"label anchors: {steps} projection updates on {len(examples)} records, "
            f"anchor loss {losses[0]:.3f} -> {sum(tail) / len(tail):.3f}"
        )

    def _anchor_vocabulary(self) -> torch.Tensor | None:
        """The anchor softmax's words (None: the whole vocabulary); a fresh run also hands
        them to word-output projections (a resumed one loads them with the weights)."""
        settings = self.config.label_anchors
        if settings is None or settings.vocabulary == "full" or not self.anchor_cards:
            return None
        ids = anchors.anchor_vocabulary(self.anchor_cards, self.model)
        if self.checkpoint is None:
            for projection in self.model.projections.values():
                if cast(Projection, projection).outputs_words:
                    cast(Projection, projection).set_word_vocabulary(ids)
        return torch.tensor(ids, dtype=torch.long)

    def _anchor_targets(self, row: int) -> list[int] | None:
        """The K anchor tokens of a training row's first sequence mention, if it has any."""
        if row not in self.anchor_rows:
            record, _ = self.data.record(row)
            item = anchors.anchored_example(record, self.anchor_cards, self.model)
            self.anchor_rows[row] = item.targets if item is not None else None
        return self.anchor_rows[row]

    def _anchor_loss(self, rows: list[int], projected: torch.Tensor | None) -> torch.Tensor | None:
        """Mean anchor loss over the micro-batch rows that have an anchor, or None."""
        if projected is None:
            return None
        starts, targets, offset = [], [], 0
        for row in rows:
            wanted = self._anchor_targets(row)
            if wanted is not None:
                starts.append(offset)
                targets.append(wanted)
            offset += len(self.cache.get(row).occurrences)
        if not starts:
            return None
        if self.anchor_table is None:
            self.anchor_table = anchors.embedding_table(self.model)
        picked = projected[torch.tensor(starts, device=projected.device)]  # (n, K, D)
        tokens = torch.tensor(targets, device=projected.device)  # (n, K)
        vocabulary = self.anchor_vocabulary
        if vocabulary is not None:
            vocabulary = vocabulary.to(projected.device)
        return anchors.anchor_loss(picked, tokens, self.anchor_table, vocabulary=vocabulary)

    # ---- resume ---------------------------------------------------------------------------

    def _check_resume_config(self) -> None:
        assert self.checkpoint is not None
        saved = self.checkpoint.config
        if saved.get("model") != self.resolved.to_dict():
            raise ChatNTError(
                f"{self.checkpoint.directory} was trained with another model config: resume "
                "with the training config it was saved with (see its config.yaml)"
            )
        current = self.config.to_dict()
        changed = [k for k in _PATH_FIELDS if saved.get("train", {}).get(k) != current[k]]
        if changed:
            warnings.warn(
                f"resuming with changed {', '.join(changed)}: training continues, but not "
                "exactly as the original run would have",
                stacklevel=2,
            )

    def _restore_state(self, checkpoint: ckpt.Checkpoint) -> None:
        state = checkpoint.trainer_state
        rank = self.accelerator.process_index
        saved_world = int(state.get("world_size", 1))
        saved_strategy = str(state.get("strategy", "replicated"))
        if saved_strategy != self.strategy:
            raise ChatNTError(
                f"{checkpoint.directory} was saved by a {saved_strategy} run and this is a "
                f"{self.strategy} run: resume with the launch it was trained with (FSDP: "
                f"{sharding.FSDP_ENV}=true)"
            )
        sharded = (checkpoint.directory / "optimizer-rank0.json").is_file()
        if sharded and saved_world != self.accelerator.num_processes:
            raise ChatNTError(
                f"{checkpoint.directory} holds optimizer state sharded over {saved_world} "
                f"processes: resume with {saved_world} processes"
            )
        optimizer_state = checkpoint.optimizer_state(rank)
        if optimizer_state is not None and self.strategy == "fsdp":
            sharding.load_optimizer_state(self.optimizer, optimizer_state)
        elif optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.tokens_seen = int(state["tokens_seen"])
        self.interval = {k: float(v) for k, v in state["interval"].items()}
        self.sampler.load_state(SamplerState.from_json(state["sampler"]))
        if saved_world != self.accelerator.num_processes:
            self.accelerator.print("resuming on a different number of processes: not exact")
        if not checkpoint.restore_rng(rank):
            self.accelerator.print(f"checkpoint has no RNG state for rank {rank}; reseeding")

    # ---- one update ---------------------------------------------------------------------

    def _update(self) -> dict[str, Any]:
        acc = self.accelerator
        self.cache.clear()
        draws = self.sampler.draw_update(
            self.step,
            self.cache.num_tokens,
            self.config.tokens_per_update,
            self.config.samples_per_update,
            min_samples=acc.num_processes,
        )
        lengths = [d.num_tokens for d in draws]
        total_answer = sum(answer_tokens(self.cache.get(d.row)) for d in draws)
        batches = plan_micro_batches(
            lengths,
            self.config.micro_batch_size,
            self.config.bucket_by_length,
            acc.process_index,
            acc.num_processes,
        )
        # Set before the backward passes: under DeepSpeed the engine steps inside the last one.
        lr = self.config.optimizer.lr * lr_factor(
            self.step, self.config.schedule, self.config.max_steps
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        for i, positions in enumerate(batches):
            examples = [self.cache.get(draws[p].row) for p in positions]
            batch = collate(examples, self.model.decoder.pad_token_id).to(acc.device)
            last = i == len(batches) - 1
            # The number of micro-batches varies per update (token budget), so the
            # accumulation boundary is marked by hand rather than with a fixed step count:
            # DeepSpeed reads this flag, DDP skips its all-reduce under no_sync.
            acc.gradient_state._set_sync_gradients(last)
            if self.strategy == "fsdp":
                sharding.set_gradient_sync(self.wrapped, last)
            autocast = acc.autocast() if self.strategy == "fsdp" else contextlib.nullcontext()
            with self._no_sync(last), autocast:  # prepare() autocasts a replicated model
                out = self.wrapped(batch)
                if out.loss is None:  # cannot happen for validated data; keep DDP in step
                    scaled = out.logits.sum() * 0.0
                else:
                    count = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
                    token_sum = out.loss * count
                    loss_sum += token_sum.detach().double()
                    scaled = token_sum * (acc.num_processes / total_answer)
                weight = self.config.label_anchors.weight if self.config.label_anchors else 0.0
                if weight > 0:
                    rows = [draws[p].row for p in positions]
                    anchor = self._anchor_loss(rows, out.projected)
                    if anchor is not None:
                        share = len(positions) * acc.num_processes / len(draws)
                        scaled = scaled + anchor * (weight * share)
                acc.backward(scaled)
        grad_norm = float("nan")
        if self.config.max_grad_norm is not None:
            params = [p for p in self.wrapped.parameters() if p.requires_grad]
            if self.strategy == "fsdp":
                grad_norm = sharding.clip_grad_norm(params, self.config.max_grad_norm)
            else:
                norm = acc.clip_grad_norm_(params, self.config.max_grad_norm)
                grad_norm = float(norm) if norm is not None else grad_norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(acc.reduce(loss_sum, reduction="sum")) / total_answer
        return {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "samples": len(draws),
            "tokens": sum(lengths),
            "answer_tokens": total_answer,
            "padding_fraction": padding_fraction(lengths, batches),
        }

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's no_sync before the last micro-batch; FSDP is told by set_gradient_sync."""
        if last or self.strategy == "fsdp":
            return contextlib.nullcontext()
        return cast(contextlib.AbstractContextManager[Any], self.accelerator.no_sync(self.wrapped))

    # ---- the loop -----------------------------------------------------------------------

    def _done(self) -> bool:
        if self.config.max_steps is not None:
            return self.step >= self.config.max_steps
        assert self.config.epochs is not None
        return self.samples_seen >= self.config.epochs * len(self.data)

    def _progress(self) -> tuple[int, int, str]:
        if self.config.max_steps is not None:
            return self.config.max_steps, self.step, "updates"
        assert self.config.epochs is not None
        return math.ceil(self.config.epochs * len(self.data)), self.samples_seen, "samples"

    def save(self) -> Path:
        acc = self.accelerator
        config = {
            "format": ckpt.FORMAT,
            "step": self.step,
            "model": self.resolved.to_dict(),
            "plugins": self.resolved.plugin_versions(),
            "train": self.config.to_dict(),
        }
        sharded = self.strategy == "fsdp" or acc.distributed_type.value == "DEEPSPEED"
        optimizer_state = self.optimizer.state_dict()
        full: dict[str, torch.Tensor] | None = None
        if self.strategy == "fsdp":
            names = ckpt.trainable_names(self.model)
            full = sharding.gathered_state(self.model, names, acc.is_main_process)
            optimizer_state = sharding.local_optimizer_state(optimizer_state)
        else:
            full = acc.get_state_dict(self.wrapped) if sharded else None
        payload = ckpt.CheckpointPayload(
            config=config,
            weights=ckpt.trainable_state_dict(self.model, full) if acc.is_main_process else {},
            trainer_state={
                "samples_seen": self.samples_seen,
                "tokens_seen": self.tokens_seen,
                "interval": self.interval,
                "sampler": self.sampler.state.to_json(),
                "lr_factor": lr_factor(self.step, self.config.schedule, self.config.max_steps),
                "strategy": self.strategy,
            },
            optimizer_state=optimizer_state,
            optimizer_sharded=sharded,
            tokenizer=ckpt.modified_tokenizer(self.model.decoder),
            rank=acc.process_index,
            world_size=acc.num_processes,
            barrier=acc.wait_for_everyone,
        )
        path = ckpt.save_checkpoint(self.output_dir, self.step, payload)
        if acc.is_main_process:
            ckpt.rotate_checkpoints(self.output_dir, self.config.keep_last)
        acc.wait_for_everyone()
        return path

    def train(self) -> TrainResult:
        acc = self.accelerator
        main = acc.is_main_process
        resume_step = self.step if self.checkpoint is not None else None
        logger = (
            MetricsLogger(self.output_dir, resume_step, self.config.tensorboard) if main else None
        )
        set_train_mode(self.model, self.config.gradient_checkpointing, self.config.lr_scale)
        total, completed, unit = self._progress()
        last_loss: float | None = None
        saved: Path | None = None
        started = time.perf_counter()
        window = {"time": started, "samples": 0, "tokens": 0}
        with ProgressBar(main and self.config.progress, total, completed, unit) as bar:
            while not self._done():
                metrics = self._update()
                self.step += 1
                self.samples_seen += metrics["samples"]
                self.tokens_seen += metrics["tokens"]
                self.interval["loss_sum"] += metrics["loss"] * metrics["answer_tokens"]
                self.interval["answer_tokens"] += metrics["answer_tokens"]
                self.interval["steps"] += 1
                window["samples"] += metrics["samples"]
                window["tokens"] += metrics["tokens"]
                saved = None
                if self.step % self.config.log_every == 0 or self._done():
                    now = time.perf_counter()
                    elapsed = max(now - window["time"], 1e-9)
                    last_loss = self.interval["loss_sum"] / self.interval["answer_tokens"]
                    row = {
                        **metrics,
                        "step": self.step,
                        "loss": last_loss,
                        "samples_per_s": window["samples"] / elapsed,
                        "tokens_per_s": window["tokens"] / elapsed,
                        "elapsed_s": now - started,
                    }
                    if logger is not None:
                        logger.log(row)
                    bar.update(self._progress()[1], last_loss, row["tokens_per_s"])
                    self.interval = {"loss_sum": 0.0, "answer_tokens": 0.0, "steps": 0.0}
                    window = {"time": now, "samples": 0, "tokens": 0}
                else:
                    bar.update(self._progress()[1], None, None)
                if self.step % self.config.save_every == 0 or self._done():
                    saved = self.save()
        if logger is not None:
            logger.close()
        acc.wait_for_everyone()
        return TrainResult(
            self.step, last_loss, self.output_dir, saved or ckpt.read_latest(self.output_dir)
        )

    @property
    def unwrapped_model(self) -> ChatNTModel:
        return self.model
