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


def test_mask_key_file_defaults_to_the_state_directory(tmp_path):
    settings = load_settings(write(tmp_path, "state_dir: state\n"))
    assert settings.mask_key_file == tmp_path / "state" / "mask.key"
    assert not settings.mask_key_shared
    assert Settings().mask_key_file == Path("/var/lib/interceptor/mask.key")


def test_mask_key_file_named_relative_to_the_settings_file(tmp_path):
    settings = load_settings(write(tmp_path, "masking: {scan_errors: false, hash_key_file: keys/fleet.key}\n"))
    assert settings.mask_key_file == tmp_path / "keys" / "fleet.key"
    assert settings.mask_key_shared
    assert settings.masking["scan_errors"] is False
    absolute = load_settings(write(tmp_path, "masking: {hash_key_file: /etc/interceptor/fleet.key}\n"))
    assert absolute.mask_key_file == Path("/etc/interceptor/fleet.key")


@pytest.mark.parametrize("masking", ["{hash_key: abc}", "{hash_key_file: 12}", "{hash_key_file: ''}",
                                     "{hash_key_file: null}", "{scan_errors: maybe}"])
def test_bad_masking_settings(tmp_path, masking):
    path = write(tmp_path, f"masking: {masking}\n")
    with pytest.raises(ConfigError, match=rf"{path}:1:10: masking takes only scan_errors: true\|false and "
                                          "hash_key_file: a path"):
        load_settings(path)
