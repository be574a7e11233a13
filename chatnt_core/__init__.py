"""chatnt: pretrained sequence encoders + English LLM decoders -> conversational agents.

The public names live here; see ``docs/architecture.md`` for the data flow.
"""

from chatnt_core.api import Answer, ChatNT
from chatnt_core.batching import Example, ModelBatch
from chatnt_core.calibration import PlattCalibrator, yes_probability
from chatnt_core.config import ModelConfig, ResolvedConfig, load_config, resolve_config
from chatnt_core.errors import ChatNTError, ConfigError, PromptError
from chatnt_core.hookspecs import hookimpl
from chatnt_core.inference.conversation import ChatSession
from chatnt_core.inference.encoding_cache import EncodingCache
from chatnt_core.inference.generation import GenerationConfig, generate_ids
from chatnt_core.inference.scoring import score_candidates
from chatnt_core.interfaces import (
    Decoder,
    DecoderOutput,
    Encoder,
    EncoderOutput,
    EncoderTokens,
    Projection,
)
from chatnt_core.modality import Modality
from chatnt_core.model import ChatNTModel, ModelOutput
from chatnt_core.plugins import BuildContext, get_registry
from chatnt_core.prompt import SequenceInput, Turn

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "BuildContext",
    "ChatNT",
    "ChatNTError",
    "ChatNTModel",
    "ChatSession",
    "ConfigError",
    "Decoder",
    "DecoderOutput",
    "Encoder",
    "EncoderOutput",
    "EncoderTokens",
    "EncodingCache",
    "Example",
    "GenerationConfig",
    "Modality",
    "ModelBatch",
    "ModelConfig",
    "ModelOutput",
    "PlattCalibrator",
    "Projection",
    "PromptError",
    "ResolvedConfig",
    "SequenceInput",
    "Turn",
    "generate_ids",
    "get_registry",
    "hookimpl",
    "load_config",
    "resolve_config",
    "score_candidates",
    "yes_probability",
]
