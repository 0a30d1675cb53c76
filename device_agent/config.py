"""Agent configuration: one TOML file, validated at start.

Every section is a dataclass; unknown keys and wrong types are refused with an error that names
the key (``audio.rate: expected int, got str``). Range checks live in each section's
``validate()``. Every path is overridable, so tests can point the whole agent at a temp dir.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from device_agent.checks.thresholds import DISK_FAIL_FREE, DISK_WARN_FREE
from hal.audio.settings import AudioSettings
from hal.camera.settings import CameraSettings
from hal.encoder.settings import EncoderSettings

DEFAULT_CONFIG_PATH = Path("/etc/device-agent/agent.toml")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {problem}")


@dataclass
class DeviceSection:
    id: str = "demo-device"
    hardware: str = "generic"
    name: str = ""
    location: str = ""
    group: str = "default"
    state_dir: str = "/var/lib/device-agent"

    def validate(self, key: str) -> None:
        _check(
            bool(self.id) and all(c.isalnum() or c in "-_." for c in self.id),
            f"{key}.id",
            "must be non-empty and contain only letters, digits, '-', '_' or '.'",
        )


@dataclass
class LoggingSection:
    level: str = "info"
    json: bool = False
    file: str = ""  # optional extra log file (pulled by diagnostics); stdout always
    file_max_bytes: int = 10 * 1024 * 1024  # rotate the log file at this size
    file_backups: int = 3  # rotated files kept (file.1 .. file.N)

    def validate(self, key: str) -> None:
        _check(
            self.level.lower() in {"debug", "info", "warning", "error", "critical"},
            f"{key}.level",
            f"unknown level {self.level!r}",
        )
        _check(self.file_max_bytes >= 64 * 1024, f"{key}.file_max_bytes", "must be >= 65536")
        _check(0 <= self.file_backups <= 50, f"{key}.file_backups", "must be 0..50")


@dataclass
class AudioSection(AudioSettings):
    """``[audio]``: the fields are the HAL's (``hal.audio.settings``); the checks are the config's."""

    def validate(self, key: str) -> None:
        _check(
            self.backend in {"synthetic", "wav", "alsa"},
            f"{key}.backend",
            f"unknown backend {self.backend!r} (synthetic, wav, alsa)",
        )
        _check(
            self.playback_rate in {8000, 16000, 22050, 32000, 44100, 48000},
            f"{key}.playback_rate",
            f"unsupported rate {self.playback_rate}",
        )
        _check(1 <= self.playback_channels <= 8, f"{key}.playback_channels", "must be 1..8")
        _check(20 <= self.playback_queue_ms <= 5000, f"{key}.playback_queue_ms", "must be 20..5000")
        _check(
            0 < self.reopen_min_s <= self.reopen_max_s <= 3600,
            f"{key}.reopen_min_s",
            "need 0 < reopen_min_s <= reopen_max_s <= 3600",
        )
        _check(
            self.rate in {8000, 16000, 22050, 32000, 44100, 48000},
            f"{key}.rate",
            f"unsupported rate {self.rate}",
        )
        _check(1 <= self.channels <= 8, f"{key}.channels", "must be 1..8")
        _check(self.period_ms in {5, 10, 20, 40}, f"{key}.period_ms", "must be 5, 10, 20 or 40")
        _check(0 <= self.synthetic_delay_ms <= 5000, f"{key}.synthetic_delay_ms", "must be 0..5000")
        _check(
            -100_000 <= self.synthetic_clock_ppm <= 100_000,
            f"{key}.synthetic_clock_ppm",
            "must be -100000..100000",
        )
        _check(-2000 <= self.offset_ms <= 2000, f"{key}.offset_ms", "must be -2000..2000")
        _check(
            self.backend != "wav" or bool(self.wav_path), f"{key}.wav_path", "required when backend = 'wav'"
        )


@dataclass
class CameraSection(CameraSettings):
    """``[camera]``: the fields are the HAL's (``hal.camera.settings``); the checks are the config's."""

    def validate(self, key: str) -> None:
        _check(
            self.backend in {"test-pattern", "file", "v4l2", "picamera2"},
            f"{key}.backend",
            f"unknown backend {self.backend!r} (test-pattern, file, v4l2, picamera2)",
        )
        _check(
            16 <= self.width <= 4096 and self.width % 2 == 0,
            f"{key}.width",
            "must be an even number 16..4096",
        )
        _check(
            16 <= self.height <= 4096 and self.height % 2 == 0,
            f"{key}.height",
            "must be an even number 16..4096",
        )
        _check(1 <= self.fps <= 120, f"{key}.fps", "must be 1..120")
        _check(self.rotation in {0, 90, 180, 270}, f"{key}.rotation", "must be 0, 90, 180 or 270")
        _check(
            self.pattern in {"bars", "busy"},
            f"{key}.pattern",
            f"unknown test pattern {self.pattern!r} (bars, busy)",
        )
        _check(self.backend != "file" or bool(self.path), f"{key}.path", "required when backend = 'file'")


@dataclass
class EncoderSection(EncoderSettings):
    """``[encoder]``: the HAL's fields (``hal.encoder.settings``) plus the fan-out's and the layers' own."""

    min_bitrate: int = 250_000  # lower clamp of the REMB-driven target (max_bitrate is the upper)
    idr_min_interval_ms: int = 250  # at most one forced IDR per this interval
    layers: int = 2  # 2: a second, lower encoding for viewers far below the others (1: one encoding)
    low_layer_scale: float = 0.5  # the low layer's width and height, as a share of the camera's

    def validate(self, key: str) -> None:
        _check(
            self.backend in {"auto", "picamera2", "v4l2m2m", "libx264"},
            f"{key}.backend",
            f"unknown backend {self.backend!r} (auto, picamera2, v4l2m2m, libx264)",
        )
        _check(
            0 < self.min_bitrate <= self.bitrate <= self.max_bitrate,
            f"{key}.bitrate",
            "need 0 < min_bitrate <= bitrate <= max_bitrate",
        )
        _check(self.keyframe_interval_s > 0, f"{key}.keyframe_interval_s", "must be > 0")
        _check(self.layers in (1, 2), f"{key}.layers", "must be 1 or 2")
        _check(0.1 <= self.low_layer_scale <= 0.75, f"{key}.low_layer_scale", "must be in [0.1, 0.75]")


@dataclass
class NoiseSuppressionSection:
    enabled: bool = True
    model: str = ""  # empty: the model shipped in the package
    threads: int = 1
    budget_rtf: float = 0.5  # bypass (with a P2 alert) when sustained real-time factor exceeds this

    def validate(self, key: str) -> None:
        _check(1 <= self.threads <= 8, f"{key}.threads", "must be 1..8")
        _check(0 < self.budget_rtf <= 1.0, f"{key}.budget_rtf", "must be in (0, 1]")


@dataclass
class WebSection:
    enabled: bool = True
    listen: str = "127.0.0.1:8080"  # a LAN address needs `token`: viewers see the camera and talk
    token: str = ""  # bearer token for WHEP and /api/stats; required unless listening on loopback
    max_viewers: int = 8
    session_timeout_s: float = 30.0  # ICE never connected within this: session dropped
    stun_servers: list[str] = field(default_factory=list)

    def validate(self, key: str) -> None:
        host, sep, port = self.listen.rpartition(":")
        _check(
            bool(sep) and port.isdigit() and 0 <= int(port) <= 65535,
            f"{key}.listen",
            f"expected HOST:PORT, got {self.listen!r}",
        )
        _check(1 <= self.max_viewers <= 256, f"{key}.max_viewers", "must be 1..256")
        _check(
            not self.enabled or bool(self.token) or is_loopback(host),
            f"{key}.token",
            f"required when web.listen ({self.listen}) is not a loopback address: anyone on the "
            "network could watch the camera and talk through the speaker",
        )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (a server bound there is reachable from this machine only)."""
    host = host.strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


@dataclass
class MqttSection:
    url: str = ""  # mqtt://host:1883 or mqtts://host:8883; empty disables the fleet link
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    telemetry_interval_s: float = 30.0
    spool_max_bytes: int = 8 * 1024 * 1024
    max_command_bytes: int = 64 * 1024
    compress_telemetry: bool = True  # deflate with the preset dictionary (device_agent/telemetry_codec.py)

    def validate(self, key: str) -> None:
        _check(
            self.url == "" or self.url.startswith(("mqtt://", "mqtts://")),
            f"{key}.url",
            "must start with mqtt:// or mqtts://",
        )
        _check(5 <= self.keepalive_s <= 3600, f"{key}.keepalive_s", "must be 5..3600")
        _check(
            0 < self.reconnect_min_s <= self.reconnect_max_s,
            f"{key}.reconnect_min_s",
            "need 0 < reconnect_min_s <= reconnect_max_s",
        )
        _check(self.telemetry_interval_s > 0, f"{key}.telemetry_interval_s", "must be > 0")
        _check(self.spool_max_bytes >= 64 * 1024, f"{key}.spool_max_bytes", "must be >= 65536")
        _check(
            1024 <= self.max_command_bytes <= 256 * 1024 * 1024,
            f"{key}.max_command_bytes",
            "must be 1024..268435456",
        )
        _check(self.session_expiry_s >= 0, f"{key}.session_expiry_s", "must be >= 0")


@dataclass
class AlertRule:
    code: str = ""
    metric: str = ""  # dotted path into the health sample, e.g. "system.temperature_c"
    op: str = ">"  # > >= < <= == !=
    threshold: float = 0.0
    clear_threshold: float | None = None  # hysteresis; defaults to threshold
    hold_s: float = 0.0
    severity: str = "P2"
    message: str = ""
    aggregate: str = ""  # over the values a "*" in metric matches: any all max min median mean count
    window_s: float = 0.0  # > 0: compare `window` of the (aggregated) value over this many seconds
    window: str = "mean"  # mean | max | min | increase (last - first: counters)

    def validate(self, key: str) -> None:
        _check(bool(self.code), f"{key}.code", "required")
        _check(bool(self.metric), f"{key}.metric", "required")
        _check(self.op in {">", ">=", "<", "<=", "==", "!="}, f"{key}.op", f"unknown op {self.op!r}")
        _check(self.severity in {"P1", "P2", "P3"}, f"{key}.severity", "must be P1, P2 or P3")
        _check(self.hold_s >= 0, f"{key}.hold_s", "must be >= 0")
        _check(
            self.aggregate in {"", "any", "all", "max", "min", "median", "mean", "count"},
            f"{key}.aggregate",
            "must be any, all, max, min, median, mean or count",
        )
        _check(
            ("*" in self.metric) == bool(self.aggregate),
            f"{key}.aggregate",
            "needed exactly when metric has a '*' segment",
        )
        _check(self.window_s >= 0, f"{key}.window_s", "must be >= 0")
        _check(
            self.window in {"mean", "max", "min", "increase"},
            f"{key}.window",
            "must be mean, max, min or increase",
        )
        _check(
            not (self.window_s and self.aggregate in {"any", "all"}),
            f"{key}.window_s",
            "a window needs a number: use max/min/median/mean/count, not any/all",
        )


@dataclass
class AlertDefaultsSection:
    """``[alert_defaults]``: the rule set that ships (device_agent/fleetlink/default_rules.py)."""

    enabled: bool = True
    disable: list[str] = field(default_factory=list)  # codes of default rules to drop
    evaluate_interval_s: float = (
        5.0  # rules run this often (and on every telemetry sample); 0: telemetry only
    )

    def validate(self, key: str) -> None:
        _check(
            self.evaluate_interval_s == 0 or self.evaluate_interval_s >= 0.5,
            f"{key}.evaluate_interval_s",
            "must be 0 or >= 0.5",
        )


@dataclass
class OtaSection:
    root: str = "/opt/device-agent"  # slots/{a,b} and the `current` symlink live here
    trusted_keys_dir: str = "/etc/device-agent/ota-keys"
    hooks_dir: str = ""  # extra firmware hooks; the packaged ones always run
    trial_deadline_s: float = 120.0
    max_failed_starts: int = 3
    download_rate_bps: int = 0  # 0: uncapped
    trial_healthy_s: float = 5.0  # healthy this long without a break before the commit
    hook_timeout_s: float = 300.0  # each firmware hook run is killed after this
    download_retries: int = 5  # bounded: a download that keeps failing gives up
    free_space_reserve_bytes: int = 64 * 1024 * 1024  # never fill the disk below this
    slot_extra_paths: list[str] = field(default_factory=list)  # added to every slot's sys.path (.pth)
    download_ca_file: str = ""  # HTTPS bundle servers: trust only this CA (empty: system CAs)

    def validate(self, key: str) -> None:
        _check(self.trial_deadline_s > 0, f"{key}.trial_deadline_s", "must be > 0")
        _check(self.max_failed_starts >= 1, f"{key}.max_failed_starts", "must be >= 1")
        _check(self.download_rate_bps >= 0, f"{key}.download_rate_bps", "must be >= 0")
        _check(
            0 < self.trial_healthy_s < self.trial_deadline_s,
            f"{key}.trial_healthy_s",
            "must be > 0 and below trial_deadline_s",
        )
        _check(self.hook_timeout_s > 0, f"{key}.hook_timeout_s", "must be > 0")
        _check(0 <= self.download_retries <= 100, f"{key}.download_retries", "must be 0..100")
        _check(self.free_space_reserve_bytes >= 0, f"{key}.free_space_reserve_bytes", "must be >= 0")


@dataclass
class DiagnosticsSection:
    log_pull_max_bytes: int = 64 * 1024 * 1024
    log_pull_rate_bps: int = 256 * 1024  # bytes/s for all transfers together; 0: uncapped
    chunk_bytes: int = 64 * 1024
    journald_unit: str = "device-agent.service"
    journalctl: str = "journalctl"  # binary used for journald pulls (skipped when absent)
    transfer_keep_s: float = 600.0  # a finished pull stays resendable (missing chunks) this long
    snapshot_width: int = 640
    snapshot_height: int = 360
    snapshot_quality: int = 5  # JPEG qscale 2 (best) .. 31
    thermal_path: str = "/sys/class/thermal/thermal_zone0/temp"
    temp_warn_c: float = 75.0
    temp_fail_c: float = 82.0
    disk_warn_free: float = DISK_WARN_FREE  # fraction of the state dir's filesystem still free
    disk_fail_free: float = DISK_FAIL_FREE  # (shared with `device-agent doctor`; it also needs 200 MB)
    ping_count: int = 20  # MQTT round trips in netcheck's loss burst
    view_max_sessions: int = 2  # concurrent `fleetctl view` sessions
    view_max_s: float = 600.0  # a remote view is closed after this long

    def validate(self, key: str) -> None:
        _check(self.chunk_bytes >= 1024, f"{key}.chunk_bytes", "must be >= 1024")
        _check(self.log_pull_rate_bps >= 0, f"{key}.log_pull_rate_bps", "must be >= 0")
        _check(self.log_pull_max_bytes >= 0, f"{key}.log_pull_max_bytes", "must be >= 0")
        _check(
            16 <= self.snapshot_width <= 4096 and self.snapshot_width % 2 == 0,
            f"{key}.snapshot_width",
            "must be an even number 16..4096",
        )
        _check(
            16 <= self.snapshot_height <= 4096 and self.snapshot_height % 2 == 0,
            f"{key}.snapshot_height",
            "must be an even number 16..4096",
        )
        _check(2 <= self.snapshot_quality <= 31, f"{key}.snapshot_quality", "must be 2..31")
        _check(self.temp_warn_c < self.temp_fail_c, f"{key}.temp_warn_c", "must be < temp_fail_c")
        _check(
            0 <= self.disk_fail_free <= self.disk_warn_free < 1,
            f"{key}.disk_warn_free",
            "need 0 <= disk_fail_free <= disk_warn_free < 1",
        )
        _check(1 <= self.ping_count <= 200, f"{key}.ping_count", "must be 1..200")
        _check(0 <= self.view_max_sessions <= 16, f"{key}.view_max_sessions", "must be 0..16")
        _check(self.view_max_s > 0, f"{key}.view_max_s", "must be > 0")


@dataclass
class ProvisioningSection:
    identity_dir: str = ""  # empty: <device.state_dir>/identity (device.key, device.crt, ca.crt)
    service_user: str = "device-agent"  # identity files are chowned to it when provisioning as root
    renew_before_days: float = 30.0  # renew the device certificate this long before it expires
    renew_check_interval_s: float = 6 * 3600.0
    renew_timeout_s: float = 30.0

    def validate(self, key: str) -> None:
        _check(self.renew_before_days > 0, f"{key}.renew_before_days", "must be > 0")
        _check(self.renew_check_interval_s >= 10, f"{key}.renew_check_interval_s", "must be >= 10")
        _check(self.renew_timeout_s > 0, f"{key}.renew_timeout_s", "must be > 0")

    def resolve_identity_dir(self, state_dir: str) -> Path:
        return Path(self.identity_dir) if self.identity_dir else Path(state_dir) / "identity"


@dataclass
class AgentConfig:
    """The whole agent configuration; every section has a default."""

    device: DeviceSection = field(default_factory=DeviceSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    audio: AudioSection = field(default_factory=AudioSection)
    camera: CameraSection = field(default_factory=CameraSection)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    ns: NoiseSuppressionSection = field(default_factory=NoiseSuppressionSection)
    web: WebSection = field(default_factory=WebSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    alerts: list[AlertRule] = field(default_factory=list)
    alert_defaults: AlertDefaultsSection = field(default_factory=AlertDefaultsSection)
    ota: OtaSection = field(default_factory=OtaSection)
    diagnostics: DiagnosticsSection = field(default_factory=DiagnosticsSection)
    provisioning: ProvisioningSection = field(default_factory=ProvisioningSection)
    source_path: str = ""  # where it was loaded from; config.set persists here

    @property
    def state_dir(self) -> Path:
        return Path(self.device.state_dir)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every section (TOML-serialisable apart from None values)."""
        data = dataclasses.asdict(self)
        data.pop("source_path", None)
        return data


class _Section(Protocol):
    """What every config section dataclass has (the non-section fields are skipped by is_dataclass)."""

    def validate(self, key: str) -> None: ...


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "source_path"}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def config_from_dict(data: dict[str, Any], source_path: str = "") -> AgentConfig:
    """Build and validate an AgentConfig from a parsed TOML document."""
    cfg = _build(AgentConfig, data, "")
    for i, rule in enumerate(cfg.alerts):
        rule.validate(f"alerts[{i}]")
    for f in dataclasses.fields(cfg):
        section: _Section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section) and not data.get(f.name):
            section.validate(f.name)  # defaults must be valid too
    cfg.source_path = source_path
    return cfg


def load_config(path: str | Path | None) -> AgentConfig:
    """Load and validate the agent configuration; ``None`` gives the embedded defaults."""
    if path is None:
        return config_from_dict({})
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return config_from_dict(data, source_path=str(p))


def dump_toml(data: dict[str, Any]) -> str:
    """Serialise a config dict (as from ``AgentConfig.to_dict``) back to TOML."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    for name, items in arrays:
        for item in items:
            lines.append(f"\n[[{name}]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
