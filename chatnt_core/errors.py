"""Errors a user can cause and fix. The CLI prints them as one line and exits 1.

Every message names the problem and the fix. Programming errors stay ordinary Python
exceptions (and keep their tracebacks).
"""

from __future__ import annotations


class ChatNTError(Exception):
    """Base class for user-facing errors: bad config, bad prompt, bad sequence."""


class ConfigError(ChatNTError):
    """A config or preset is malformed; the message gives the field path."""


class UnknownComponentError(ConfigError):
    """A config names an encoder/projection/decoder/task no plugin registered."""


class DuplicateComponentError(ChatNTError):
    """Two plugins registered the same component name."""


class PluginError(ChatNTError):
    """A plugin misbehaved while registering its components."""


class PromptError(ChatNTError):
    """A prompt or its sequences cannot be turned into model input."""


class TagWithoutSequenceError(PromptError):
    pass


class UnusedSequenceError(PromptError):
    pass


class InvalidTagError(PromptError):
    """Text that looks like a tag but breaks the tag rules (e.g. a path after '@')."""


class InvalidSequenceError(PromptError):
    pass


class EmptySequenceError(PromptError):
    pass


class UnknownModalityError(PromptError):
    pass


class PromptTooLongError(PromptError):
    pass


class PlaceholderCountError(PromptError):
    """The number of placeholder rows differs from K times the number of tags."""
