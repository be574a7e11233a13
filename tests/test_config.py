"""Two-stage config validation, presets, and the ``chatnt config`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from chatnt_core.cli import main
from chatnt_core.config import ModelConfig, load_config, parse_config, resolve_config
from chatnt_core.errors import ConfigError, UnknownComponentError
from chatnt_core.modality import Modality
from chatnt_core.presets import preset_names, preset_path, registry_root

MODEL_YAMLS = sorted((registry_root() / "models").glob("*.yaml"))


def tiny() -> dict[str, Any]:
    data = yaml.safe_load(preset_path("tiny-random").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("path", MODEL_YAMLS, ids=lambda p: p.stem)
def test_every_shipped_model_yaml_validates(path: Path) -> None:
    resolved = resolve_config(load_config(path))
    assert resolved.config.name == path.stem
    assert path.read_text().startswith("#"), "each preset starts with a header comment"


def test_presets_include_tiny_random_and_a_variant() -> None:
    assert {"tiny-random", "tiny-random-mlp"} <= set(preset_names())


def test_variant_differs_only_in_projection() -> None:
    base = resolve_config(load_config("tiny-random")).to_dict()
    variant = resolve_config(load_config("tiny-random-mlp")).to_dict()
    for data in (base, variant):
        data.pop("name")
        data.pop("description")
        for slot in data["encoders"].values():
            slot.pop("projection")
    assert base == variant
    assert {
        s.config.name for s in resolve_config(load_config("tiny-random-mlp")).projections.values()
    } == {"mlp"}


def test_resolved_config_fills_defaults_and_round_trips(tmp_path: Path) -> None:
    resolved = resolve_config(load_config("tiny-random"))
    params = resolved.config.encoders[Modality.DNA].params
    assert params["hidden_size"] == 32
    assert "ffn_dim" in params  # a default the YAML left out is now explicit
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(resolved.to_yaml())
    again = resolve_config(load_config(dumped))
    assert again.to_dict() == resolved.to_dict()


def test_stage_one_rejects_unknown_fields_with_their_path() -> None:
    data = tiny()
    data["encoders"]["dna"]["projection"]["trainabel"] = True
    with pytest.raises(ConfigError, match=r"encoders\.dna\.projection\.trainabel: Extra inputs"):
        parse_config(data)


def test_stage_one_rejects_unknown_modality() -> None:
    data = tiny()
    data["encoders"]["dan"] = data["encoders"].pop("dna")
    with pytest.raises(ConfigError, match=r"encoders\.dan"):
        parse_config(data)


def test_stage_one_needs_an_encoder_and_positive_k() -> None:
    data = tiny()
    data["encoders"] = {}
    data["num_latents"] = 0
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "num_latents" in str(info.value) and "at least one encoder" in str(info.value)


def test_stage_two_unknown_name_has_path_and_suggestion() -> None:
    data = tiny()
    data["decoder"]["name"] = "hf-causal-llm"
    with pytest.raises(UnknownComponentError) as info:
        resolve_config(parse_config(data))
    message = str(info.value)
    assert message.startswith("decoder.name: unknown decoder 'hf-causal-llm'")
    assert "did you mean 'hf-causal-lm'" in message


def test_stage_two_params_error_has_path() -> None:
    data = tiny()
    data["encoders"]["rna"]["params"]["hidden_size"] = "wide"
    with pytest.raises(ConfigError, match=r"encoders\.rna\.params\.hidden_size: Input should be"):
        resolve_config(parse_config(data))
    data = tiny()
    data["encoders"]["dna"]["projection"]["params"]["layers"] = 3
    with pytest.raises(ConfigError, match=r"encoders\.dna\.projection\.params\.layers: Extra"):
        resolve_config(parse_config(data))


def test_validation_loads_no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("validation must not load a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", refuse)
    data = tiny()
    data["decoder"]["params"] = {"path": "/nonexistent/vicuna-7b"}
    resolved = resolve_config(parse_config(data))
    assert resolved.decoder.params.path == "/nonexistent/vicuna-7b"  # type: ignore[attr-defined]


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean 'tiny-random'.*Presets: .*tiny-random"):
        load_config("tiny-randm")


def test_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("encoders: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listed)


def test_model_config_schema_forbids_extra() -> None:
    assert ModelConfig.model_config.get("extra") == "forbid"


def test_cli_validate_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "show", "tiny-random"])
    assert exit_info.value.code == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "validate", str(shown)])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"ok: {shown}")


def test_cli_error_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny()
    data["decoder"]["name"] = "gpt-nope"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "validate", str(bad)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: decoder.name: unknown decoder 'gpt-nope'")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["config", "list"])
    assert "tiny-random-mlp" in capsys.readouterr().out.split()


def test_every_problem_of_a_file_is_listed_with_suggestions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = """
encoders:
  dna:
    name: motif-cnn
    params: {hidden_sise: 64}
    projection: {name: english-aware-perceivr}
decoder: {name: hf-causal-lm, params: {pathh: x}}
"""
    expected = [
        "encoders.dna.params.hidden_sise: Extra inputs are not permitted (did you mean "
        "'hidden_size'?)",
        "encoders.dna.projection.name: unknown projection 'english-aware-perceivr'; did you "
        "mean 'english-aware-perceiver'?",
        "decoder.params.pathh: Extra inputs are not permitted (did you mean 'path'?)",
    ]
    for structure, first in [("num_latents: 8", None), ("num_latents: 0", "num_latents: ")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(structure + body)
        with pytest.raises(SystemExit) as exit_info:
            main(["config", "validate", str(bad)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.count("\n") == 1
        assert err.startswith(f"error: {bad}: ")
        for fragment in expected + ([first] if first else []):
            assert fragment in err
