"""Conformance checks for a component's params model (the ``params:`` block of a config).

The core validates a config's ``params`` against this model before anything is built,
writes the filled-in result back as JSON-compatible data (``chatnt config show`` prints
it, checkpoints store it), validates it again when that is loaded, and publishes the JSON
schema in ``chatnt plugins --json``. Each of those steps is a check here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from chatnt_core.testing.report import CheckFailed, ConformanceReport, bind_checks, run_checks

UNKNOWN_KEY = "chatnt_conformance_unknown_key"


@dataclass
class ParamsCase:
    params_model: type[BaseModel]
    example: dict[str, Any]

    def model(self) -> type[BaseModel]:
        model = self.params_model
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise CheckFailed(
                f"the params model must be a pydantic BaseModel subclass, got {model!r}"
            )
        return model

    def validated(self) -> BaseModel:
        try:
            return self.model().model_validate(self.example)
        except ValidationError as exc:
            raise CheckFailed(
                f"the example params do not validate: {exc.errors()[0]['msg']}"
            ) from None


def check_is_pydantic(case: ParamsCase) -> None:
    case.model()


def check_extra_forbid(case: ParamsCase) -> None:
    model = case.model()
    if model.model_config.get("extra") != "forbid":
        raise CheckFailed(
            'set model_config = ConfigDict(extra="forbid") so a misspelt key in a config is '
            "an error instead of being ignored"
        )
    try:
        model.model_validate({**case.example, UNKNOWN_KEY: 1})
    except ValidationError:
        return
    raise CheckFailed(f"an unknown key {UNKNOWN_KEY!r} was accepted")


def check_example_validates(case: ParamsCase) -> None:
    case.validated()


def check_json_roundtrip(case: ParamsCase) -> None:
    params = case.validated()
    dumped = params.model_dump(mode="json")
    try:
        text = json.dumps(dumped)
    except (TypeError, ValueError) as exc:
        raise CheckFailed(f"model_dump(mode='json') is not JSON-serialisable: {exc}") from None
    try:
        again = case.model().model_validate(json.loads(text))
    except ValidationError as exc:
        raise CheckFailed(
            f"the dumped params do not validate again: {exc.errors()[0]['msg']}"
        ) from None
    if again != params:
        raise CheckFailed(
            f"validate -> dump -> validate changed the params: {params!r} -> {again!r}"
        )


def check_json_schema(case: ParamsCase) -> None:
    model = case.model()
    try:
        schema = model.model_json_schema()
        json.dumps(schema)
    except Exception as exc:
        raise CheckFailed(f"no JSON schema ({type(exc).__name__}: {exc})") from None
    listed = set(schema.get("properties", {}))
    missing = sorted(set(model.model_fields) - listed)
    if missing:
        raise CheckFailed(f"fields {missing} are missing from the JSON schema")


PARAMS_CHECKS: dict[str, Callable[[ParamsCase], None]] = {
    "params_is_pydantic": check_is_pydantic,
    "params_extra_forbid": check_extra_forbid,
    "params_example_validates": check_example_validates,
    "params_json_roundtrip": check_json_roundtrip,
    "params_json_schema": check_json_schema,
}


def check_params_model(
    params_model: type[BaseModel],
    example: Mapping[str, Any] | None = None,
    *,
    skip: Iterable[str] = (),
) -> ConformanceReport:
    """Run every params-model check on ``example`` (a ``params:`` block; default ``{}``).

    Check names start with ``params_`` so they never clash with a component's own checks
    in the combined report of :func:`~chatnt_core.testing.check_component`.
    """
    case = ParamsCase(params_model, dict(example or {}))
    name = getattr(params_model, "__name__", repr(params_model))
    return run_checks(f"params model {name}", bind_checks(PARAMS_CHECKS, case), skip)
