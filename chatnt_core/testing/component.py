"""Check a registered component end to end: params model, factory, then the instance.

This is the path a config takes (validate ``params``, call ``factory(params, context)``),
so it also catches what checking a hand-built instance cannot: a factory that ignores its
context, or a params model the built component does not agree with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from chatnt_core.config import format_validation_error
from chatnt_core.interfaces import Decoder, Encoder, Projection
from chatnt_core.plugins import (
    BuildContext,
    ComponentEntry,
    ComponentKind,
    PluginRegistry,
    get_registry,
)
from chatnt_core.testing._common import DEFAULT_ATOL, DEFAULT_RTOL
from chatnt_core.testing.decoder import DECODER_CHECKS, check_decoder
from chatnt_core.testing.encoder import ENCODER_CHECKS, check_encoder
from chatnt_core.testing.params import PARAMS_CHECKS, check_params_model
from chatnt_core.testing.projection import PROJECTION_CHECKS, check_projection
from chatnt_core.testing.report import (
    CheckFailed,
    CheckResult,
    CheckSkipped,
    ConformanceReport,
    run_check,
)

_INTERFACES: dict[ComponentKind, type[Any]] = {
    ComponentKind.ENCODER: Encoder,
    ComponentKind.PROJECTION: Projection,
    ComponentKind.DECODER: Decoder,
}
_KIND_CHECKS: dict[ComponentKind, Iterable[str]] = {
    ComponentKind.ENCODER: ENCODER_CHECKS,
    ComponentKind.PROJECTION: PROJECTION_CHECKS,
    ComponentKind.DECODER: DECODER_CHECKS,
}
BUILD_CHECK, CONTEXT_CHECK = "build", "matches_context"  # "build" cannot be skipped


def _entry(
    component: ComponentEntry | tuple[ComponentKind | str, str], registry: PluginRegistry | None
) -> ComponentEntry:
    if isinstance(component, ComponentEntry):
        return component
    kind, name = component
    return (registry or get_registry()).get(ComponentKind(kind), name)


def _check_context(built: Any, kind: ComponentKind, context: BuildContext) -> None:
    """The built component agrees with what the assembly asked for."""
    if kind is ComponentKind.ENCODER:
        if context.modality is not None and built.modality != context.modality:
            raise CheckFailed(
                f"built for modality {context.modality.value} but encodes {built.modality}"
            )
    elif kind is ComponentKind.PROJECTION:
        asked = (context.num_latents, context.output_dim)
        got = (built.num_latents, built.output_dim)
        if any(a is not None and a != g for a, g in zip(asked, got)):
            raise CheckFailed(
                f"context asks for (num_latents, output_dim) = {asked}, the projection has {got}"
            )
    else:
        raise CheckSkipped("a decoder's context is empty")


def check_component(
    component: ComponentEntry | tuple[ComponentKind | str, str],
    params: Mapping[str, Any] | None = None,
    context: BuildContext | None = None,
    *,
    registry: PluginRegistry | None = None,
    sequences: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    skip: Iterable[str] = (),
) -> ConformanceReport:
    """Validate ``params``, build through the registered factory, run the kind's checks.

    ``component`` is a registry entry or ``(kind, name)`` looked up in ``registry`` (the
    installed plugins by default). ``context`` is what the assembly would pass: for an
    encoder its ``modality``; for a projection ``input_dim``, ``output_dim``,
    ``num_latents`` (and ``question_vocab_size`` for an own question table). The
    save/load round-trip rebuilds through the factory with the same params. ``sequences``
    (encoders) and ``texts`` (decoders) replace the default test inputs.

    The report holds the ``params_*`` checks, ``build``, ``matches_context`` and then the
    checks of :func:`check_encoder`, :func:`check_projection` or :func:`check_decoder`.
    """
    entry = _entry(component, registry)
    if entry.kind not in _INTERFACES:
        raise ValueError(
            f"check_component covers encoders, projections and decoders, not {entry.kind}s"
        )
    context = context or BuildContext()
    if entry.kind is ComponentKind.PROJECTION and context.input_dim is None:
        raise ValueError("checking a projection needs BuildContext(input_dim=...) (D_enc)")
    skip = set(skip)
    known = {*PARAMS_CHECKS, CONTEXT_CHECK, *_KIND_CHECKS[entry.kind]}
    if skip - known:
        raise ValueError(
            f"cannot skip unknown check(s) {sorted(skip - known)}; the checks are: {sorted(known)}"
        )
    example = dict(params or {})
    report = ConformanceReport(
        f"{entry.kind} '{entry.name}' (plugin {entry.plugin} {entry.version})"
    )
    report.extend(check_params_model(entry.params_model, example, skip=skip & set(PARAMS_CHECKS)))

    interface = _INTERFACES[entry.kind]

    def build() -> Any:
        try:
            validated: BaseModel = entry.params_model.model_validate(example)
        except ValidationError as exc:
            raise CheckFailed(f"params do not validate: {format_validation_error(exc)}") from None
        built = entry.build(validated, context)
        if not isinstance(built, interface):
            raise CheckFailed(
                f"the factory returned a {type(built).__name__}, which is not an instance of "
                f"{interface.__name__}"
            )
        return built

    built: list[Any] = []
    report.results.append(run_check(BUILD_CHECK, lambda: built.append(build())))
    if not built:
        return report  # nothing to check further
    instance = built[0]
    if CONTEXT_CHECK in skip:
        report.results.append(CheckResult(CONTEXT_CHECK, "skipped", "skipped by the caller"))
    else:
        report.results.append(
            run_check(CONTEXT_CHECK, lambda: _check_context(instance, entry.kind, context))
        )

    kind_skip = skip & set(_KIND_CHECKS[entry.kind])
    rebuild: Callable[[], Any] = build
    if entry.kind is ComponentKind.ENCODER:
        kind_report = check_encoder(
            instance, sequences, rebuild=rebuild, atol=atol, rtol=rtol, skip=kind_skip
        )
    elif entry.kind is ComponentKind.PROJECTION:
        assert context.input_dim is not None  # checked above
        kind_report = check_projection(
            instance,
            input_dim=context.input_dim,
            question_vocab_size=context.question_vocab_size,
            rebuild=rebuild,
            atol=atol,
            rtol=rtol,
            skip=kind_skip,
        )
    else:
        kind_report = check_decoder(
            instance, texts, rebuild=rebuild, atol=atol, rtol=rtol, skip=kind_skip
        )
    report.extend(kind_report)
    return report
