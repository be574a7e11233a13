"""Conformance checks for a :class:`~chatnt_core.interfaces.Projection`.

The core hands a projection a padded (B, N, D_enc) batch of encoder rows and, when it
reads the question, a padded (B, Q, D) batch of question embeddings (from its own table
when ``question_source == "own"``). It needs (B, K, D) back, independent of how much
padding either batch carries and of what the padded slots hold; deterministic in eval
mode; differentiable (projections are what instruction tuning trains); and loadable from
a safetensors checkpoint.

The test batch is random but seeded; padded slots hold large random values on purpose,
so a projection that reads them cannot pass by luck.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch

from chatnt_core.interfaces import Projection
from chatnt_core.testing._common import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Tolerance,
    check_save_load_roundtrip,
    evaluating,
    module_device,
    require_finite,
)
from chatnt_core.testing.report import (
    CheckFailed,
    CheckSkipped,
    ConformanceReport,
    bind_checks,
    run_checks,
)

SEQUENCE_LENGTHS = (3, 9, 6)  # real encoder tokens per row; N = 9
QUESTION_LENGTHS = (4, 1, 7)  # real question tokens per row (the core never sends none)
EXTRA_PADDING = 5  # padded columns appended by the padding-invariance checks
JUNK_SCALE = 10.0  # padded slots hold noise this large: reading them must show


def _right_padded_mask(lengths: tuple[int, ...], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (B, width)


@dataclass(frozen=True)
class ProjectionInputs:
    """One test batch. Exactly one of ``question_ids`` / ``question_embeddings`` is set
    when the projection reads the question (ids for an own table, embeddings otherwise)."""

    seq: torch.Tensor  # (B, N, D_enc)
    seq_mask: torch.Tensor  # (B, N) bool
    question_ids: torch.Tensor | None = None  # (B, Q) long
    question_embeddings: torch.Tensor | None = None  # (B, Q, D)
    question_mask: torch.Tensor | None = None  # (B, Q) bool


@dataclass
class ProjectionCase:
    projection: Projection
    input_dim: int
    question_vocab_size: int
    rebuild: Callable[[], Projection] | None
    tolerance: Tolerance
    # One seeded stream for every random input: the same report on every run.
    generator: torch.Generator = field(
        init=False, default_factory=lambda: torch.Generator().manual_seed(0)
    )

    @property
    def reads_question(self) -> bool:
        return bool(self.projection.uses_question)

    @property
    def own_table(self) -> bool:
        return self.reads_question and self.projection.question_source == "own"

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    def _question_filler(self, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ids (own table) or embeddings for ``width`` question columns."""
        if self.own_table:
            ids = torch.randint(
                0, self.question_vocab_size, (batch, width), generator=self.generator
            )
            return ids, torch.empty(0)
        return torch.empty(0), self._randn(batch, width, self.projection.output_dim)

    def inputs(self) -> ProjectionInputs:
        batch, width = len(SEQUENCE_LENGTHS), max(SEQUENCE_LENGTHS)
        seq_mask = _right_padded_mask(SEQUENCE_LENGTHS, width)
        seq = self._randn(batch, width, self.input_dim)
        seq = torch.where(seq_mask[..., None], seq, JUNK_SCALE * self._randn(*seq.shape))
        if not self.reads_question:
            return ProjectionInputs(seq, seq_mask)
        q_width = max(QUESTION_LENGTHS)
        question_mask = _right_padded_mask(QUESTION_LENGTHS, q_width)
        ids, embeddings = self._question_filler(batch, q_width)
        if self.own_table:
            return ProjectionInputs(seq, seq_mask, question_ids=ids, question_mask=question_mask)
        junk = JUNK_SCALE * self._randn(*embeddings.shape)
        embeddings = torch.where(question_mask[..., None], embeddings, junk)
        return ProjectionInputs(seq, seq_mask, None, embeddings, question_mask)

    def with_extra_sequence_padding(self, inputs: ProjectionInputs) -> ProjectionInputs:
        batch = inputs.seq.shape[0]
        junk = JUNK_SCALE * self._randn(batch, EXTRA_PADDING, self.input_dim)
        pad_mask = torch.zeros(batch, EXTRA_PADDING, dtype=torch.bool)
        return replace(
            inputs,
            seq=torch.cat([inputs.seq, junk], dim=1),
            seq_mask=torch.cat([inputs.seq_mask, pad_mask], dim=1),
        )

    def with_extra_question_padding(self, inputs: ProjectionInputs) -> ProjectionInputs:
        assert inputs.question_mask is not None
        batch = inputs.seq.shape[0]
        ids, embeddings = self._question_filler(batch, EXTRA_PADDING)
        pad_mask = torch.zeros(batch, EXTRA_PADDING, dtype=torch.bool)
        mask = torch.cat([inputs.question_mask, pad_mask], dim=1)
        if inputs.question_ids is not None:
            return replace(
                inputs,
                question_ids=torch.cat([inputs.question_ids, ids], dim=1),
                question_mask=mask,
            )
        assert inputs.question_embeddings is not None
        embeddings = torch.cat([inputs.question_embeddings, JUNK_SCALE * embeddings], dim=1)
        return replace(inputs, question_embeddings=embeddings, question_mask=mask)

    def call(
        self, projection: Projection, inputs: ProjectionInputs, requires_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the projection in eval mode; returns (output (B, K, D), the seq input used).

        With an own question table, the question is embedded by ``projection`` itself, so
        a fresh instance in the save/load check uses its own loaded table.
        """
        device = module_device(projection)
        seq = inputs.seq.detach().to(device)  # a new tensor: the inputs stay untouched
        if requires_grad:
            seq.requires_grad_(True)
        question = question_mask = None
        with torch.set_grad_enabled(requires_grad), evaluating(projection):
            if inputs.question_ids is not None:
                question = projection.embed_question(inputs.question_ids.to(device))
            elif inputs.question_embeddings is not None:
                question = inputs.question_embeddings.to(device)
            if inputs.question_mask is not None:
                question_mask = inputs.question_mask.to(device)
            out = projection(seq, inputs.seq_mask.to(device), question, question_mask)
        if not isinstance(out, torch.Tensor):
            raise CheckFailed(f"forward returned a {type(out).__name__}, not a tensor")
        return out, seq

    def output(self, projection: Projection, inputs: ProjectionInputs) -> torch.Tensor:
        return self.call(projection, inputs)[0]


def _row(
    inputs: ProjectionInputs, i: int, trim_sequence: bool, trim_question: bool
) -> ProjectionInputs:
    """Batch row ``i`` alone, with its sequence and/or question padding cut off."""
    n = int(inputs.seq_mask[i].sum()) if trim_sequence else inputs.seq.shape[1]
    row = ProjectionInputs(inputs.seq[i : i + 1, :n], inputs.seq_mask[i : i + 1, :n])
    if inputs.question_mask is None:
        return row
    q = int(inputs.question_mask[i].sum()) if trim_question else inputs.question_mask.shape[1]
    ids = inputs.question_ids[i : i + 1, :q] if inputs.question_ids is not None else None
    embeddings = inputs.question_embeddings
    embeddings = embeddings[i : i + 1, :q] if embeddings is not None else None
    return replace(
        row,
        question_ids=ids,
        question_embeddings=embeddings,
        question_mask=inputs.question_mask[i : i + 1, :q],
    )


# ---- the checks, in the order they run ------------------------------------------------


def check_attributes(case: ProjectionCase) -> None:
    projection = case.projection
    for name in ("num_latents", "output_dim"):
        value = getattr(projection, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckFailed(f"projection.{name} must be a positive int, got {value!r}")
    if not isinstance(projection.uses_question, bool):
        raise CheckFailed(f"uses_question must be a bool, got {projection.uses_question!r}")
    if projection.question_source not in ("own", "decoder"):
        raise CheckFailed(
            f"question_source must be 'own' or 'decoder', got {projection.question_source!r}"
        )


def check_question_embedding(case: ProjectionCase) -> None:
    if not case.own_table:
        raise CheckSkipped("the projection has no question table of its own")
    inputs = case.inputs()
    assert inputs.question_ids is not None
    with torch.no_grad():
        embedded = case.projection.embed_question(
            inputs.question_ids.to(module_device(case.projection))
        )
    expected = (*inputs.question_ids.shape, case.projection.output_dim)
    if not embedded.is_floating_point() or tuple(embedded.shape) != expected:
        raise CheckFailed(
            f"embed_question must return float (B, Q, D) = {expected}, got "
            f"{embedded.dtype} {tuple(embedded.shape)}"
        )
    require_finite(embedded, "question embeddings")


def check_output_shape(case: ProjectionCase) -> None:
    out = case.output(case.projection, case.inputs())
    expected = (len(SEQUENCE_LENGTHS), case.projection.num_latents, case.projection.output_dim)
    if not out.is_floating_point() or tuple(out.shape) != expected:
        raise CheckFailed(
            f"output must be float (B, K, D) = {expected} for a (B, N, {case.input_dim}) "
            f"input, got {out.dtype} {tuple(out.shape)}"
        )


def check_finite(case: ProjectionCase) -> None:
    require_finite(case.output(case.projection, case.inputs()), "output")


def check_sequence_padding_invariance(case: ProjectionCase) -> None:
    inputs = case.inputs()
    base = case.output(case.projection, inputs)
    padded = case.output(case.projection, case.with_extra_sequence_padding(inputs))
    case.tolerance.assert_close(
        padded,
        base,
        f"output with {EXTRA_PADDING} more padded sequence columns (is seq_mask honoured?)",
    )
    for i in range(base.shape[0]):
        alone = case.output(
            case.projection, _row(inputs, i, trim_sequence=True, trim_question=False)
        )
        case.tolerance.assert_close(alone[0], base[i], f"row {i} alone without sequence padding")


def check_question_padding_invariance(case: ProjectionCase) -> None:
    if not case.reads_question:
        raise CheckSkipped("the projection does not read the question")
    inputs = case.inputs()
    base = case.output(case.projection, inputs)
    padded = case.output(case.projection, case.with_extra_question_padding(inputs))
    case.tolerance.assert_close(
        padded,
        base,
        f"output with {EXTRA_PADDING} more padded question columns (is question_mask honoured?)",
    )
    for i in range(base.shape[0]):
        alone = case.output(
            case.projection, _row(inputs, i, trim_sequence=False, trim_question=True)
        )
        case.tolerance.assert_close(alone[0], base[i], f"row {i} alone without question padding")


def check_determinism(case: ProjectionCase) -> None:
    inputs = case.inputs()
    case.tolerance.assert_close(
        case.output(case.projection, inputs),
        case.output(case.projection, inputs),
        "two eval-mode calls on the same batch (dropout or randomness left on?)",
    )


def check_gradient(case: ProjectionCase) -> None:
    """Gradients reach every trainable parameter and the real (never the padded) inputs."""
    projection = case.projection
    trainable = [(name, p) for name, p in projection.named_parameters() if p.requires_grad]
    saved = [p.grad for _, p in trainable]
    try:
        for _, parameter in trainable:
            parameter.grad = None
        inputs = case.inputs()
        out, seq = case.call(projection, inputs, requires_grad=True)
        # A random readout: a plain sum can have zero gradient through a LayerNorm.
        weights = torch.randn(out.shape, generator=case.generator).to(out.device)
        (out.float() * weights).sum().backward()
        missing = [name for name, p in trainable if p.grad is None]
        if missing:
            raise CheckFailed(f"no gradient reaches parameter(s) {missing[:5]}")
        for name, parameter in trainable:
            assert parameter.grad is not None
            require_finite(parameter.grad, f"gradient of {name}")
        if seq.grad is None:
            raise CheckFailed("no gradient reaches the sequence embeddings")
        mask = inputs.seq_mask.to(seq.device)
        if not bool(seq.grad[mask].abs().sum() > 0):
            raise CheckFailed("the gradient with respect to the real sequence embeddings is zero")
        if bool(seq.grad[~mask].abs().sum() > 0):
            raise CheckFailed(
                "padded sequence positions receive a gradient: seq_mask is not honoured"
            )
    finally:
        for (_, parameter), grad in zip(trainable, saved):
            parameter.grad = grad


def check_save_load(case: ProjectionCase) -> None:
    inputs = case.inputs()
    check_save_load_roundtrip(
        case.projection, case.rebuild, lambda p: case.output(p, inputs), case.tolerance
    )


PROJECTION_CHECKS: dict[str, Callable[[ProjectionCase], None]] = {
    "attributes": check_attributes,
    "question_embedding": check_question_embedding,
    "output_shape": check_output_shape,
    "finite": check_finite,
    "sequence_padding_invariance": check_sequence_padding_invariance,
    "question_padding_invariance": check_question_padding_invariance,
    "determinism": check_determinism,
    "gradient": check_gradient,
    "save_load_roundtrip": check_save_load,
}


def check_projection(
    projection: Projection,
    *,
    input_dim: int,
    question_vocab_size: int | None = None,
    rebuild: Callable[[], Projection] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    skip: Iterable[str] = (),
) -> ConformanceReport:
    """Run every projection check; see :data:`PROJECTION_CHECKS` for the names.

    ``input_dim`` is D_enc, the width of the encoder rows it receives (BuildContext
    ``input_dim``). ``question_vocab_size`` bounds the random question ids fed to an own
    question table (BuildContext ``question_vocab_size``); without it only id 0 is used.
    ``rebuild`` makes a fresh instance for the save/load round-trip (by default a deep
    copy with scrambled weights).
    """
    case = ProjectionCase(
        projection, input_dim, question_vocab_size or 1, rebuild, Tolerance(atol, rtol)
    )
    return run_checks(
        f"projection {type(projection).__name__}", bind_checks(PROJECTION_CHECKS, case), skip
    )
