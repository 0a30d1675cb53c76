"""The fleetctl profile: where every command finds the broker, its credentials, the store and the API.

One TOML file (``$FLEETCTL_PROFILE``, else ``$XDG_CONFIG_HOME/fleetctl/profile.toml``, else
``~/.config/fleetctl/profile.toml``; ``--profile-file PATH`` on any command). Its top-level keys
are the default profile; a table ``[NAME]`` is a named profile, selected with ``--profile NAME``
(or ``FLEETCTL_PROFILE_NAME``), whose keys override the top-level ones::

    mqtt = "mqtts://fleet.example.com:8885"   # the broker's fleet-service listener
    state_dir = "/var/lib/device-fleet"       # CA, service identity, claims (ca/cert/key come from it)
    db = "postgresql://fleet@db/fleet"

    [staging]
    mqtt = "mqtts://staging.example.com:8885"

Each key also has an environment variable (:data:`KEYS`), which overrides the file; a command's
flag overrides both. Relative paths in the file are relative to the file's directory. When the
broker URL is ``mqtts://`` and ``ca``/``cert``/``key`` are not given, they come from ``state_dir``
(the fleet CA and the service identity ``fleetctl broker-config`` wrote), if those files exist.

Every command reads its settings through :func:`settings` only; ``fleetctl profile show`` prints
the effective values (secrets redacted) and where each one came from.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import Exit, FleetctlError, redact_url

PROFILE_ENV = "FLEETCTL_PROFILE"
PROFILE_NAME_ENV = "FLEETCTL_PROFILE_NAME"
DEFAULT_STATE_DIR = "/var/lib/device-fleet"


@dataclass(frozen=True)
class Key:
    """One profile key: its environment variable, flag, type and meaning."""

    name: str
    env: str
    flag: str
    help: str
    kind: type = str
    path: bool = False  # relative to the profile file's directory
    secret: bool = False
    default: Any = None


KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key(
            "mqtt", "FLEET_MQTT_URL", "--mqtt", "broker URL: mqtts://HOST:PORT of the fleet-service listener"
        ),
        Key("ca", "FLEET_CA", "--ca", "CA file the broker's certificate chains to", path=True),
        Key("cert", "FLEET_CERT", "--cert", "client certificate (mutual TLS)", path=True),
        Key("key", "FLEET_KEY", "--key", "client key", path=True),
        Key(
            "db",
            "FLEET_DB",
            "--db",
            "fleet store: SQLite path or postgresql:// URL",
            path=True,
            default="fleet.db",
        ),
        Key("db_prefix", "FLEET_DB_PREFIX", "--prefix", "table name prefix in the fleet store", default=""),
        Key("api", "FLEET_API_URL", "--api", "fleet HTTP API base URL (fleetctl serve --http)"),
        Key("token", "FLEET_TOKEN", "--token", "API bearer token (fleetctl token create)", secret=True),
        Key(
            "state_dir",
            "FLEETCTL_STATE_DIR",
            "--state-dir",
            "fleet state: CA, service identity, claims, provisioning registry",
            path=True,
            default=DEFAULT_STATE_DIR,
        ),
        Key("http", "FLEET_HTTP", "--http", "fleetctl serve: serve the HTTP API and /metrics on HOST:PORT"),
        Key("broker_dir", "FLEET_BROKER_DIR", "--out", "fleetctl broker-config: output directory", path=True),
        Key(
            "device_port",
            "FLEET_DEVICE_PORT",
            "--port",
            "broker-config: device listener port",
            int,
            default=8883,
        ),
        Key(
            "claim_port",
            "FLEET_CLAIM_PORT",
            "--claim-port",
            "broker-config: claim listener port",
            int,
            default=8884,
        ),
    )
}


METAVARS = {"mqtt": "URL", "db": "URL|PATH", "db_prefix": "PREFIX", "api": "URL", "http": "HOST:PORT"}
METAVARS |= {"state_dir": "DIR", "broker_dir": "DIR", "device_port": "PORT", "claim_port": "PORT"}


def dest(key: str) -> str:
    """The argparse destination of a profile key's flag (``profile_<key>``: never another option's)."""
    return f"profile_{key}"


def add_flags(parser: argparse.ArgumentParser, *keys: str, help_: dict[str, str] | None = None) -> None:
    """Add the flags of ``keys`` to a command; their values override the profile and environment."""
    for name in keys:
        k = KEYS[name]
        text = (help_ or {}).get(name, k.help)
        parser.add_argument(
            k.flag,
            dest=dest(name),
            type=k.kind,
            default=None,
            metavar=METAVARS.get(name, "PATH" if k.path else name.upper()),
            help=f"{text} (env {k.env}; profile key {name})",
        )


def add_selection_flags(parser: argparse.ArgumentParser) -> None:
    """``--profile NAME`` and ``--profile-file PATH`` (every fleetctl command has them)."""
    parser.add_argument(
        "--profile",
        dest="profile_name",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help=f"named profile (a [NAME] table of the profile file; env {PROFILE_NAME_ENV})",
    )
    parser.add_argument(
        "--profile-file",
        dest="profile_file",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"profile file (env {PROFILE_ENV}; default ~/.config/fleetctl/profile.toml)",
    )


def default_file(env: dict[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "fleetctl" / "profile.toml"


@dataclass
class Setting:
    value: Any
    source: str  # "flag --mqtt", "env FLEET_MQTT_URL", "profile FILE [NAME]", "state_dir", "default"


class Settings:
    """The effective settings of one command: :meth:`get` a value, :meth:`source` where it came from."""

    def __init__(self, values: dict[str, Setting], file: Path | None, name: str) -> None:
        self.values = values
        self.file = file
        self.name = name

    def get(self, key: str) -> Any:
        return self.values[key].value

    def source(self, key: str) -> str:
        return self.values[key].source

    def require(self, key: str, what: str = "") -> Any:
        """The value, or a usage error saying how to give it."""
        value = self.get(key)
        if value in (None, ""):
            k = KEYS[key]
            where = (
                f"profile {self.file}"
                if self.file
                else f"a profile ({PROFILE_ENV} or {default_file(dict(os.environ))})"
            )
            raise FleetctlError(
                Exit.USAGE,
                f"{what or 'this command'} needs the {k.help.split(':')[0]} ({key}): give {k.flag}, "
                f"set {k.env}, or add `{key} = ...` to {where}",
            )
        return value

    def mqtt(self, what: str = "") -> tuple[str, str, str, str]:
        """(url, ca, cert, key) for a broker connection; each file that is given must be readable."""
        url = self.require("mqtt", what)
        files = []
        for key in ("ca", "cert", "key"):
            path = self.get(key) or ""
            if path and not os.access(path, os.R_OK):
                problem = "does not exist" if not os.path.exists(path) else "is not readable"
                raise FleetctlError(Exit.USAGE, f"{key} file {path} ({self.source(key)}) {problem}")
            files.append(path)
        return url, files[0], files[1], files[2]

    def shown(self, key: str) -> str:
        """The value for people: secrets redacted, URLs without passwords."""
        value = self.get(key)
        if value in (None, ""):
            return "-"
        if KEYS[key].secret:
            text = str(value)
            return f"{text[:13]}… (redacted)" if len(text) > 16 else "(redacted)"
        return redact_url(str(value))

    def rows(self) -> list[dict[str, str]]:
        return [{"key": k, "value": self.shown(k), "source": self.source(k)} for k in KEYS]


def _load_file(path: Path, explicit: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise FleetctlError(Exit.USAGE, f"profile file {path} ({explicit}) does not exist") from None
        return {}
    except OSError as exc:
        raise FleetctlError(Exit.USAGE, f"profile file {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetctlError(Exit.USAGE, f"profile file {path}: not valid TOML: {exc}") from None


def _check(table: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    out = {}
    for name, value in table.items():
        k = KEYS.get(name)
        if k is None:
            raise FleetctlError(
                Exit.USAGE, f"profile file {path}{where}: unknown key {name!r} (known: {', '.join(KEYS)})"
            )
        if not isinstance(value, k.kind) or isinstance(value, bool):
            raise FleetctlError(
                Exit.USAGE, f"profile file {path}{where}: {name} must be a {k.kind.__name__}, not {value!r}"
            )
        if k.path and isinstance(value, str) and value and "://" not in value:
            value = str((path.parent / Path(value).expanduser()).absolute())
        out[name] = value
    return out


def load(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> Settings:
    """Resolve every key: flag, else environment, else the named profile, else the file's top level,
    else (ca/cert/key) the state directory, else the default."""
    env = dict(os.environ) if env is None else env
    explicit = ""
    file_arg = getattr(args, "profile_file", None)
    if file_arg:
        path, explicit = Path(file_arg).expanduser().absolute(), "--profile-file"
    elif env.get(PROFILE_ENV):
        path, explicit = Path(env[PROFILE_ENV]).expanduser().absolute(), PROFILE_ENV
    else:
        path = default_file(env)
    doc = _load_file(path, explicit)
    name = getattr(args, "profile_name", None) or env.get(PROFILE_NAME_ENV, "")
    top = _check({k: v for k, v in doc.items() if not isinstance(v, dict)}, path, "")
    named: dict[str, Any] = {}
    if name:
        section = doc.get(name)
        if not isinstance(section, dict):
            known = sorted(k for k, v in doc.items() if isinstance(v, dict))
            raise FleetctlError(
                Exit.USAGE,
                f"no profile {name!r} in {path}"
                + (f" (profiles: {', '.join(known)})" if known else " (it has no [NAME] tables)"),
            )
        named = _check(section, path, f" [{name}]")
    values: dict[str, Setting] = {}
    for key, k in KEYS.items():
        flag = getattr(args, dest(key), None) if args is not None else None
        if flag not in (None, ""):
            values[key] = Setting(flag, f"flag {k.flag}")
        elif env.get(k.env, "") != "":
            raw = env[k.env]
            try:
                values[key] = Setting(k.kind(raw), f"env {k.env}")
            except ValueError:
                raise FleetctlError(Exit.USAGE, f"{k.env}={raw!r}: not a {k.kind.__name__}") from None
        elif key in named:
            values[key] = Setting(named[key], f"profile {path} [{name}]")
        elif key in top:
            values[key] = Setting(top[key], f"profile {path}")
        else:
            values[key] = Setting(k.default, "default" if k.default not in (None, "") else "-")
    _derive_tls(values)
    return Settings(values, path if doc or explicit else None, name)


def _derive_tls(values: dict[str, Setting]) -> None:
    """ca/cert/key from the state directory, for an mqtts:// broker, when not given otherwise."""
    url = values["mqtt"].value or ""
    if not str(url).startswith("mqtts://"):
        return
    state = Path(values["state_dir"].value or DEFAULT_STATE_DIR)
    for key, rel in (
        ("ca", "ca/ca.crt"),
        ("cert", "service/fleet-service.crt"),
        ("key", "service/fleet-service.key"),
    ):
        if values[key].value in (None, "") and (state / rel).exists():
            values[key] = Setting(str(state / rel), f"state_dir ({values['state_dir'].source})")


def settings(args: argparse.Namespace) -> Settings:
    """The settings of the running command (resolved once per command)."""
    cached = getattr(args, "_fleet_settings", None)
    if cached is None:
        cached = load(args)
        args._fleet_settings = cached
    return cached
