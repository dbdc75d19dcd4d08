"""The config reference: every key described, the commented YAML loading back as the same config."""

from pathlib import Path

import pytest
import yaml

from alcap.cli import main
from alcap.config import RunConfig, config_entries, describe_config, from_dict, load_config
from alcap.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_every_key_and_section_says_what_it_means():
    undocumented = [e["key"] for e in config_entries(RunConfig()) if len(e["help"]) < 10]
    assert undocumented == []


def _configs():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if "methods" in data:
            experiment = load_experiment(path)
            yield from (experiment.run_config(m, 7) for m in experiment.methods)
        else:
            yield load_config(path)


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: c.output_dir)
def test_the_commented_config_loads_back_as_the_same_config(config):
    shown = describe_config(config)
    assert from_dict(RunConfig, yaml.safe_load(shown)) == config
    assert shown.count("\n# ") + shown.count("  # ") >= len(config_entries(config))  # a comment per entry


def test_show_marks_changed_values_with_their_default(capsys):
    assert main(["config", "show", "--set", "train.lr=1e-4", "--set", "model.alcap.fusion_layers=[1]"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0001\n" in out and "[default: 5.0e-05]" in out
    assert "fusion_layers: [1]\n" in out and "[default: [4, 5]]" in out
    assert "[default: facebook/bart-base]" not in out  # unchanged values carry no default note


def test_show_reads_experiment_methods_and_model_directories(capsys, tmp_path):
    assert main(["config", "show", str(ROOT / "configs/demo.yaml"), "--method", "bart", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "use_music: false" in out and "seed: 5" in out
    assert main(["config", "show", str(ROOT / "configs/demo.yaml")]) == 2
    assert "choose a method with --method (text-pretrain, bart, bart-fusion, alcap)" in capsys.readouterr().err
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 3}}))
    assert main(["config", "show", str(tmp_path)]) == 0
    assert "epochs: 3" in capsys.readouterr().out
    assert main(["config", "show", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_the_reference_page_is_the_generated_one():
    page = (ROOT / "docs/config.md").read_text()
    assert page.endswith(describe_config(RunConfig(), "markdown")), \
        "docs/config.md is stale: regenerate its tables with `alcap config show --format markdown`"
