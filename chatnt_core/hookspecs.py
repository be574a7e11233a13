"""The plugin hooks: the whole contract between chatnt and a plugin package.

A plugin is a module listed under the ``chatnt`` entry-point group that implements any
of these hooks with ``@chatnt_core.hookimpl``. Each hook receives a ``register`` callback:

    register(name, factory, params_model)

``params_model`` is a pydantic model (``extra="forbid"``) that validates the ``params:``
block of a config; ``factory(params, context)`` builds the component from validated params
and a :class:`chatnt_core.plugins.BuildContext`. For tasks, ``factory()`` takes no
arguments and returns the task card.
"""

from __future__ import annotations

from typing import Protocol

import pluggy
from pydantic import BaseModel

hookspec = pluggy.HookspecMarker("chatnt")
hookimpl = pluggy.HookimplMarker("chatnt")


class Register(Protocol):
    def __call__(self, name: str, factory: object, params_model: type[BaseModel]) -> None: ...


@hookspec
def register_encoders(register: Register) -> None:
    """Register sequence encoders (DNA, RNA, protein): factory(params, context) -> Encoder."""


@hookspec
def register_projections(register: Register) -> None:
    """Register projections: factory(params, context) -> Projection."""


@hookspec
def register_decoders(register: Register) -> None:
    """Register English decoders: factory(params, context) -> Decoder."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register task cards: factory() -> the card (a mapping or pydantic model)."""
