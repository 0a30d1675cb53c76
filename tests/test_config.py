from pathlib import Path

import pytest

from device_agent.config import ConfigError, config_from_dict, dump_toml, load_config


def test_defaults_are_valid() -> None:
    cfg = load_config(None)
    assert cfg.camera.width == 1280 and cfg.audio.backend == "synthetic"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"audio": {"rate": "16000"}}, "audio.rate: expected an integer, got str"),
        ({"audio": {"rat": 16000}}, "audio.rat: unknown key"),
        ({"camera": {"fps": 0}}, "camera.fps: must be 1..120"),
        ({"web": {"listen": "localhost"}}, "web.listen: expected HOST:PORT"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"alerts": [{"code": "hot", "metric": "x", "severity": "P9"}]}, "alerts[0].severity"),
        ({"encoder": {"bitrate": 100, "min_bitrate": 200}}, "encoder.bitrate"),
        ({"web": {"listen": "0.0.0.0:8080"}}, "web.token: required when web.listen"),
    ],
)
def test_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data)


def test_file_roundtrip(tmp_path: Path) -> None:
    cfg = config_from_dict({"device": {"id": "cam-7"}, "alerts": [{"code": "hot", "metric": "system.temp"}]})
    path = tmp_path / "agent.toml"
    path.write_text(dump_toml(cfg.to_dict()))
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.source_path == str(path)


def test_missing_and_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio\nrate=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
