"""The docs stay true: the example plugin runs, every config field and hook is documented,
and every relative link resolves."""

from __future__ import annotations

import re
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from conftest import InstallPlugin
from pydantic import BaseModel

from chatnt_core import ChatNTModel, hookspecs
from chatnt_core.config import (
    ComponentConfig,
    DecoderConfig,
    EncoderSlot,
    ModelConfig,
    PromptConfig,
    parse_config,
)
from chatnt_core.interfaces import Encoder
from chatnt_core.plugins import (
    BUILTIN_DISTRIBUTION,
    ENTRY_POINT_GROUP,
    ComponentKind,
    load_registry,
    reset_registry,
)
from chatnt_core.testing import check_encoder

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def read_doc(name: str) -> str:
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing"
    return path.read_text(encoding="utf-8")


def fenced_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def only_block(text: str, language: str, containing: str = "") -> str:
    blocks = [b for b in fenced_blocks(text, language) if containing in b]
    assert len(blocks) == 1, (
        f"expected exactly one ```{language} block containing {containing!r}, got {len(blocks)}"
    )
    return blocks[0]


def toml_sections(text: str) -> dict[str, dict[str, str]]:
    """The ``key = "value"`` pairs of each ``[section]`` of a small TOML snippet."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        header = re.fullmatch(r"\[([^\]]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        pair = re.fullmatch(r'([\w.-]+)\s*=\s*"([^"]*)"', line)
        if pair:
            current[pair.group(1)] = pair.group(2)
    return sections


# ---- the example plugin package of docs/plugins.md -------------------------------------

EXAMPLE = DOCS / "examples" / "chatnt-kmer-encoder"
FILE_BLOCK = re.compile(r"^```[\w+-]+ file=(\S+)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def example_file(name: str) -> str:
    path = EXAMPLE / name
    assert path.is_file(), f"docs/examples/chatnt-kmer-encoder/{name} is missing"
    return path.read_text(encoding="utf-8")


def non_blank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_plugins_md_shows_the_example_package_verbatim_and_completely() -> None:
    """The package is the one source of truth: each ```lang file=PATH block is a verbatim
    piece of that file, and a file's blocks, in order, cover every line of it."""
    blocks: dict[str, list[str]] = {}
    for name, body in FILE_BLOCK.findall(read_doc("plugins.md")):
        blocks.setdefault(name, []).append(body)
    assert {
        "src/chatnt_kmer/__init__.py",
        "pyproject.toml",
        "example.yaml",
        "tests/test_conformance.py",
    } <= set(blocks)
    for name, bodies in blocks.items():
        source = example_file(name)
        for body in bodies:
            assert body in source, f"a docs/plugins.md block differs from {name}:\n{body}"
        shown = [line for body in bodies for line in non_blank_lines(body)]
        assert shown == non_blank_lines(source), f"docs/plugins.md does not show all of {name}"


def test_plugins_md_example_is_discovered_and_answers(install_plugin: InstallPlugin) -> None:
    source = example_file("src/chatnt_kmer/__init__.py")
    pyproject = toml_sections(example_file("pyproject.toml"))
    config_data = yaml.safe_load(example_file("example.yaml"))

    dist = pyproject["project"]["name"]
    version = pyproject["project"]["version"]
    ((entry_point, module),) = pyproject[f"project.entry-points.{ENTRY_POINT_GROUP}"].items()
    install_plugin(dist, entry_point, module, source, version)
    reset_registry()

    registry = load_registry()
    assert not registry.broken, registry.broken
    assert registry.plugins[entry_point] == version
    name = config_data["encoders"]["dna"]["name"]
    entry = registry.get(ComponentKind.ENCODER, name)
    assert entry.plugin == entry_point
    assert entry.params_model.model_config.get("extra") == "forbid"

    model = ChatNTModel.from_config(parse_config(config_data, source="example.yaml")).eval()
    encoder = model.encoders["dna"]
    assert isinstance(encoder, Encoder)
    assert type(encoder).__module__ == module
    answers = model.generate(
        ["Is @p.fna a promoter?", "What is in @a.fna and @b.fna?"],
        [{"p.fna": "TATAAAAGGCGCTTAGC"}, {"a.fna": "ACGTNACG", "b.fna": "GGGCCCAT"}],
        max_new_tokens=2,
    )
    assert len(answers) == 2
    assert all(isinstance(answer, str) for answer in answers)


def test_plugins_md_failure_example_is_what_the_suite_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Step 10 shows the report for the example without its masking line; it is real."""
    masking = "x = self.embedding(input_ids) * keep"
    source = example_file("src/chatnt_kmer/__init__.py")
    assert masking in source
    module = types.ModuleType("chatnt_kmer_without_masking")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(source.replace(masking, "x = self.embedding(input_ids)"), module.__dict__)
    params = module.KmerParams(k=3, embed_dim=8)
    report = check_encoder(module.KmerEncoder(params))
    assert [r.name for r in report.failures] == ["padding_invariance"]
    shown = only_block(read_doc("plugins.md"), "text", containing="AssertionError")
    assert report["padding_invariance"].reason.split(": max abs")[0] in shown


def test_example_yaml_uses_the_tiny_random_decoder() -> None:
    config_data = yaml.safe_load(example_file("example.yaml"))
    preset = yaml.safe_load((ROOT / "registry" / "models" / "tiny-random.yaml").read_text())
    assert config_data["decoder"] == preset["decoder"]
    assert only_block(read_doc("plugins.md"), "yaml") in example_file("example.yaml")


# ---- docs/config.md documents every field -------------------------------------------


def section(text: str, heading_fragment: str) -> str:
    """The body of the first heading (any level) containing ``heading_fragment``, up to the
    next heading of the same or a higher level."""
    headings = list(re.finditer(r"^(#+)\s+(.*)$", text, re.MULTILINE))
    for i, heading in enumerate(headings):
        if heading_fragment in heading.group(2):
            level = len(heading.group(1))
            end = next(
                (h.start() for h in headings[i + 1 :] if len(h.group(1)) <= level), len(text)
            )
            return text[heading.end() : end]
    raise AssertionError(f"docs/config.md has no heading containing {heading_fragment!r}")


def documented_fields(body: str) -> set[str]:
    """Field names in the first column of the tables of a section: ``| `field` | ...``."""
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", body, re.MULTILINE))


def builtin_plugins() -> set[str]:
    return {
        ep.name
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION
    }


@pytest.mark.parametrize(
    "model",
    [ModelConfig, ComponentConfig, EncoderSlot, DecoderConfig, PromptConfig],
    ids=lambda m: m.__name__,
)
def test_config_md_documents_every_schema_field(model: type[BaseModel]) -> None:
    body = section(read_doc("config.md"), model.__name__)
    fields = set(model.model_fields)
    if model is EncoderSlot or model is DecoderConfig:
        # These extend ComponentConfig: its fields are named in prose, the new ones in a table.
        inherited = set(ComponentConfig.model_fields)
        assert all(f"`{name}`" in body for name in inherited), model.__name__
        fields = fields - inherited if model is EncoderSlot else {"trainable"}
    missing = fields - documented_fields(body)
    assert not missing, f"docs/config.md, section {model.__name__}: undocumented {missing}"


def test_config_md_documents_every_builtin_component_param() -> None:
    text = read_doc("config.md")
    registry = load_registry()
    builtins = builtin_plugins()
    components = [
        entry
        for kind in (ComponentKind.ENCODER, ComponentKind.PROJECTION, ComponentKind.DECODER)
        for entry in registry.entries[kind].values()
        if entry.plugin in builtins
    ]
    names = {entry.name for entry in components}
    assert {"char-transformer", "english-aware-perceiver", "mlp", "hf-causal-lm"} <= names
    for entry in components:
        body = section(text, f"`{entry.name}`")
        missing = set(entry.params_model.model_fields) - documented_fields(body)
        assert not missing, f"docs/config.md, {entry.kind} {entry.name}: undocumented {missing}"


# ---- docs/plugins.md documents every hook --------------------------------------------


def test_plugins_md_documents_every_hook() -> None:
    text = read_doc("plugins.md")
    hooks = [
        name
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, "chatnt_spec")
    ]
    assert len(hooks) >= 4
    missing = [name for name in hooks if f"`{name}`" not in text]
    assert not missing, f"docs/plugins.md does not document hooks {missing}"


# ---- links ---------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def github_anchor(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {github_anchor(h) for h in re.findall(r"^#+\s+(.*)$", text, re.MULTILINE)}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, ...
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        missing_anchor = bool(fragment) and resolved.suffix == ".md"
        if not resolved.exists() or (missing_anchor and fragment not in anchors(resolved)):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_docs_exist_and_are_linked_from_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("architecture.md", "config.md", "plugins.md"):
        assert (DOCS / name).is_file()
        assert f"(docs/{name})" in readme


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both README examples run: the preset one as is, the checkpoint one on a tiny checkpoint."""
    import re

    from chatnt_core.cli import main

    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    out = tmp_path / "runs" / "quickstart"
    with pytest.raises(SystemExit):
        main(
            [
                "quickstart",
                "--from-scratch",
                "--out",
                str(out),
                "--steps",
                "2",
                "--train-size",
                "10",
                "--test-size",
                "10",
                "--eval-per-task",
                "10",
            ]
        )
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_the_task_card_in_docs_tasks_is_valid() -> None:
    from chatnt_core.data.tasks import parse_card

    card = parse_card(yaml.safe_load(only_block(read_doc("tasks.md"), "yaml")), "docs/tasks.md")
    assert card.name == "my-promoters" and card.kind == "binary"
