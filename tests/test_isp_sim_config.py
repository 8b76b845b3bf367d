"""isp_sim.config: the YAML -> dataclass helpers every package's config uses."""
from dataclasses import dataclass

import pytest

from isp_sim.config import apply_overrides, build_section, check_sections, read_yaml_mapping


@dataclass
class Section:
    steps: int = 10
    lr: float = 0.1

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


def test_build_section_defaults_values_and_errors():
    assert build_section(Section, None, "s") == Section()
    assert build_section(Section, {"lr": 0.5}, "s") == Section(lr=0.5)
    with pytest.raises(ValueError, match=r"unknown key\(s\) in section 'optim': \['stepz'\]"):
        build_section(Section, {"stepz": 3}, "section 'optim'")
    with pytest.raises(KeyError, match="must be a mapping"):
        build_section(Section, [1, 2], "s", error=KeyError)
    with pytest.raises(ValueError, match="bad values in s: steps must be >= 1"):
        build_section(Section, {"steps": 0}, "s")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['typo'\] at the top level"):
        check_sections({"run": {}, "typo": 1}, ["run"], "c.yaml")


def test_read_yaml_mapping_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run: {steps: 3}\n")
    d = apply_overrides(read_yaml_mapping(p), ["run.lr=0.5", "new.key=[1, 2]"])
    assert d == {"run": {"steps": 3, "lr": 0.5}, "new": {"key": [1, 2]}}
    assert apply_overrides({}, {"a.b": 1}) == {"a": {"b": 1}}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="list.yaml must be a YAML mapping, got list"):
        read_yaml_mapping(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        read_yaml_mapping(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        read_yaml_mapping(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="must look like section.key=value"):
        apply_overrides({}, ["run.steps"])
    with pytest.raises(ValueError, match="'run' is not a section"):
        apply_overrides({"run": 3}, ["run.steps=1"])
