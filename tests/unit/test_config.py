from pathlib import Path

import pytest

from interceptor.config import ConfigError, Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "interceptor.yaml"
    path.write_text(text)
    return path


def test_defaults_when_empty(tmp_path):
    settings = load_settings(write(tmp_path, ""))
    assert settings.enforcer_port == Settings().enforcer_port
    assert settings.redirect == "auto"


def test_values_and_relative_paths(tmp_path):
    settings = load_settings(write(tmp_path, "redirect: iptables\nenforcer_port: 1999\npolicy: p.yaml\n"))
    assert settings.redirect == "iptables"
    assert settings.enforcer_port == 1999
    assert settings.policy == tmp_path / "p.yaml"


def test_unknown_key_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "redirect: bpf\nenforcer_prot: 999\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert f"{path}:2:1: unknown setting 'enforcer_prot'" in str(err.value)


def test_bad_values_are_each_reported(tmp_path):
    path = write(tmp_path, "redirect: magic\nrefuse_port: 70000\nenforcer_port: yes\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert f"{path}:1:11: redirect must be bpf, iptables or auto" in message
    assert f"{path}:2:14: refuse_port must be a port number" in message
    assert f"{path}:3:16: enforcer_port has the wrong type" in message


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "redirect: [bpf\n")
    with pytest.raises(ConfigError, match=rf"{path}:2:1: invalid YAML"):
        load_settings(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))
