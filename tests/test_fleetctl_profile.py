"""The fleetctl profile (fleet/profile.py): file, named tables, environment and flags, in that order."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fleet.cli import build_parser
from fleet.errors import Exit, FleetctlError
from fleet.lookup import match
from fleet.profile import load


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flag_over_env_over_named_table_over_top_level_over_default(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "p.toml",
        'mqtt = "mqtts://top:8885"\ndb = "top.db"\nca = "certs/ca.crt"\n'
        '[staging]\nmqtt = "mqtts://staging:8885"\ndb_prefix = "stg_"\n',
    )
    env = {"FLEETCTL_PROFILE": str(f), "FLEET_DB": "postgresql://env@db/fleet", "HOME": str(tmp_path)}
    args = build_parser().parse_args(["devices", "--profile", "staging", "--prefix", "flag_"])
    s = load(args, env)
    assert (s.get("mqtt"), s.source("mqtt")) == ("mqtts://staging:8885", f"profile {f} [staging]")
    assert (s.get("db"), s.source("db")) == ("postgresql://env@db/fleet", "env FLEET_DB")
    assert (s.get("db_prefix"), s.source("db_prefix")) == ("flag_", "flag --prefix")
    assert s.get("ca") == str(tmp_path / "certs" / "ca.crt")  # relative to the file's directory
    assert (s.get("claim_port"), s.source("claim_port")) == (8884, "default")
    # --profile before the command works too, and the top level alone without it
    assert (
        load(build_parser().parse_args(["--profile", "staging", "alerts"]), env)
        .get("mqtt")
        .startswith("mqtts://staging")
    )
    assert load(build_parser().parse_args(["alerts"]), env).get("mqtt") == "mqtts://top:8885"


def test_tls_files_come_from_the_state_dir_for_mqtts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for rel in ("ca/ca.crt", "service/fleet-service.crt", "service/fleet-service.key"):
        (state / rel).parent.mkdir(parents=True, exist_ok=True)
        (state / rel).write_text("x")
    env = {"FLEET_MQTT_URL": "mqtts://b:8885", "FLEETCTL_STATE_DIR": str(state), "HOME": str(tmp_path)}
    s = load(argparse.Namespace(), env)
    assert s.get("cert") == str(state / "service/fleet-service.crt")
    assert s.source("cert") == "state_dir (env FLEETCTL_STATE_DIR)"
    assert load(argparse.Namespace(), {**env, "FLEET_MQTT_URL": "mqtt://b"}).get("ca") is None  # plain


@pytest.mark.parametrize(
    "text,env,needle",
    [
        ('mqt = "x"\n', {}, "unknown key 'mqt'"),
        ("claim_port = '8884'\n", {}, "claim_port must be a int"),
        ("mqtt = \n", {}, "not valid TOML"),
        ("", {"FLEETCTL_PROFILE_NAME": "prod"}, "no profile 'prod'"),
        ("", {"FLEET_CLAIM_PORT": "eighty"}, "FLEET_CLAIM_PORT='eighty': not a int"),
    ],
)
def test_profile_mistakes_are_usage_errors_naming_them(
    tmp_path: Path, text: str, env: dict[str, str], needle: str
) -> None:
    f = _write(tmp_path / "p.toml", text)
    with pytest.raises(FleetctlError) as err:
        load(argparse.Namespace(), {"FLEETCTL_PROFILE": str(f), **env})
    assert err.value.code == Exit.USAGE and needle in err.value.message


def test_a_named_file_must_exist_the_default_one_may_not(tmp_path: Path) -> None:
    with pytest.raises(FleetctlError, match="does not exist"):
        load(argparse.Namespace(), {"FLEETCTL_PROFILE": str(tmp_path / "nope.toml")})
    s = load(argparse.Namespace(), {"HOME": str(tmp_path)})  # no ~/.config/fleetctl/profile.toml
    assert s.file is None and s.get("db") == "fleet.db"
    with pytest.raises(FleetctlError, match="needs the broker URL") as err:
        s.require("mqtt", "fleetctl cmd")
    assert err.value.code == Exit.USAGE and "FLEET_MQTT_URL" in err.value.message


def test_secrets_are_redacted(tmp_path: Path) -> None:
    env = {
        "FLEET_TOKEN": "fleet_1a2b3c4d_" + "s" * 43,
        "FLEET_DB": "postgresql://fleet:pw@db/f",
        "HOME": "/x",
    }
    rows = {r["key"]: r["value"] for r in load(argparse.Namespace(), env).rows()}
    assert "sss" not in rows["token"] and rows["token"].startswith("fleet_1a2b3c4")
    assert rows["db"] == "postgresql://fleet:***@db/f"


def test_device_lookup_by_id_name_or_unique_prefix() -> None:
    ids = ["cam-001", "cam-002", "spk-9"]
    idents = {"cam-001": {"name": "Lobby door"}, "dev-7f": {"name": "Garage"}}
    assert match("cam-002", ids, idents) == ["cam-002"]
    assert match("lobby door", ids, idents) == ["cam-001"]  # a name, case-insensitive
    assert match("gar", ids, idents) == ["dev-7f"]  # a name prefix; provisioned but never seen
    assert match("spk", ids, idents) == ["spk-9"]
    assert match("cam", ids, idents) == ["cam-001", "cam-002"]  # ambiguous: the caller lists them
    assert match("nope", ids, idents) == []


async def test_store_commands_go_through_the_api_when_the_profile_has_one(tmp_path: Path) -> None:
    """devices, show, alerts, ack with ``api`` in the profile: the same answers as from the store, and
    the database need not be reachable from the operator's machine (FLEET_DB points nowhere)."""
    import asyncio
    import json
    import os
    import sys

    from fleet.api.server import ApiServer
    from fleet.store import Store
    from tests.test_fleet_store import event, status, tele

    db = str(tmp_path / "fleet.db")
    store = Store(db)
    store.ingest(
        [
            status("cam-1", True),
            status("cam-2", False, reason="lost"),
            tele("cam-1", "b1", 1, temperature_c=48.0),
            event("cam-1", 2, type="alert", severity="P2", code="fps_low", message="fps 9 < 25", active=True),
        ]
    )
    api = ApiServer(store, "127.0.0.1", 0)  # loopback: no token needed
    await api.start()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "FLEETCTL_"))}
    base["HOME"] = str(tmp_path)

    async def fleetctl(*argv: str, **env: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet.cli", *argv, env={**base, **env}, stdout=-1, stderr=-1
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    via_api = {"FLEET_API_URL": api.url, "FLEET_DB": str(tmp_path / "nowhere" / "x.db")}
    try:
        (c1, from_store, e1), (c2, from_api, e2) = await asyncio.gather(
            fleetctl("devices", "--json", FLEET_DB=db), fleetctl("devices", "--json", **via_api)
        )
        assert c1 == c2 == 0, (e1, e2)
        keys = ("device", "group", "online", "version", "active_alerts")
        assert [{k: r[k] for k in keys} for r in json.loads(from_api)] == [
            {k: r[k] for k in keys} for r in json.loads(from_store)
        ]
        code, out, err = await fleetctl("show", "cam-1", **via_api)
        assert code == 0 and "temperature_c" in out and "fps_low" in out, err
        code, _, err = await fleetctl("show", "cam-9", **via_api)
        assert code == 4 and "no device 'cam-9'" in err, err
        code, out, err = await fleetctl("ack", "cam-1", "fps_low", "--note", "known", **via_api)
        assert code == 0 and "acknowledged device:cam-1:fps_low by loopback: known" in out, err
        code, out, _ = await fleetctl("alerts", "--json", **via_api)
        assert {a["code"]: a["acked_by"] for a in json.loads(out)}["fps_low"] == "loopback"
    finally:
        await api.stop()
        store.close()
    code, _, err = await fleetctl("devices", **via_api)  # the API gone: one line, exit 3
    assert (
        code == 3 and err.startswith("fleetctl: error: cannot reach the fleet API") and err.count("\n") == 1
    )


def test_claim_qr_codes_name_the_profiles_broker_and_claim_port(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "FLEETCTL_"))}
    env |= {
        "HOME": str(tmp_path),
        "FLEET_MQTT_URL": "mqtts://fleet.example.com:8885",
        "FLEET_CLAIM_PORT": "9884",
        "FLEETCTL_STATE_DIR": str(tmp_path / "state"),
    }

    def fleetctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleet.cli", *argv], env=env, capture_output=True, text=True, timeout=60
        )

    assert fleetctl("ca", "init").returncode == 0
    res = fleetctl("claim", "create", "--group", "lobby", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["qr"].endswith("@fleet.example.com:9884")
    again = fleetctl("ca", "init")  # a CA exists: a usage error in one line, nothing replaced
    assert (
        again.returncode == 2
        and again.stderr.startswith("fleetctl: error: ")
        and again.stderr.count("\n") == 1
    )
