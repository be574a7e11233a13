"""chatnt's conformance suite, run on this plugin: one line per component.

`check_encoder` tests an instance you build yourself; `check_component` goes the way a
config does - through the installed entry point, the params model and the factory - so
it also proves that `pip install` registered the plugin.
"""

from __future__ import annotations

import pytest
from chatnt_core import BuildContext, Modality
from chatnt_core.errors import ConfigError
from chatnt_core.testing import check_component, check_encoder, check_params_model

from chatnt_kmer import KmerEncoder, KmerParams, build_kmer_encoder


def test_encoder_conforms() -> None:
    def rebuild() -> KmerEncoder:  # a fresh instance for the save/load round-trip
        return KmerEncoder(KmerParams(k=3, embed_dim=8, seed=1))

    encoder = KmerEncoder(KmerParams(k=3, embed_dim=8))
    check_encoder(encoder, rebuild=rebuild).raise_for_failures()


@pytest.mark.parametrize("k", [1, 2, 6])
def test_encoder_conforms_for_other_k(k: int) -> None:
    sequences = ["ACGTACGTAC", "TTAGGCATTACGATCGTAACGG", "GATTACA"]
    check_encoder(KmerEncoder(KmerParams(k=k)), sequences).raise_for_failures()


def test_params_model_conforms() -> None:
    check_params_model(KmerParams, {"k": 4, "embed_dim": 8}).raise_for_failures()


def test_registered_component_conforms() -> None:
    context = BuildContext(modality=Modality.DNA)
    check_component(("encoder", "kmer-embedding"), {"k": 3}, context).raise_for_failures()


def test_factory_refuses_another_modality() -> None:
    with pytest.raises(ConfigError, match="encodes DNA only"):
        build_kmer_encoder(KmerParams(), BuildContext(modality=Modality.PROTEIN))
