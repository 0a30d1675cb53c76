"""What fleetctl commands share: the fleet store, device lookup by name or id prefix, the broker
connection, and the check that a device is known and online before a command goes to it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import Exit, FleetctlError, redact_url
from fleet.profile import Settings, settings

if TYPE_CHECKING:
    from fleet.client import FleetClient
    from fleet.store import Store


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL or path (None for PostgreSQL or an in-memory database)."""
    from fleet.store import normalise_url

    full = normalise_url(url)
    if not full.startswith("sqlite:///") or full in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(full[len("sqlite:///") :])


def api_request(
    base: str, token: str, method: str, path: str, body: Any = None, timeout_s: float = 30.0
) -> Any:
    """One call of the fleet API (``fleetctl serve --http``) under ``/api/v1``; the answer's JSON.

    Failures are one line with fleetctl's exit codes: unknown (404) 4, refused by the fleet (409,
    422) 1, our request or token (400, 401, 403) 2, the API unreachable 3.
    """
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + "/api/v1" + path, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = str(json.loads(exc.read())["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code} {exc.reason}"
        code = {404: Exit.NOT_FOUND, 409: Exit.FAILED, 422: Exit.FAILED}.get(exc.code, Exit.USAGE)
        raise FleetctlError(code, message) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FleetctlError(Exit.UNREACHABLE, f"cannot reach the fleet API at {base}: {reason}") from None


class ApiStore:
    """What the store commands read (and acknowledge) through the fleet API instead of the database,
    in the shapes of :class:`fleet.store.Store`: for an operator who has the API but not the database."""

    dialect = "api"

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return api_request(self.url, self.token, method, path, body)

    def list_devices(self, group: str | None = None) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        rows: list[dict[str, Any]] = []
        after = ""
        while True:
            query = {
                "limit": 1000,
                **({"group": group} if group else {}),
                **({"after": after} if after else {}),
            }
            page = self._call("GET", f"/devices?{urlencode(query)}")
            rows += [{"device": r.pop("id"), **r} for r in page["devices"]]
            after = page.get("next") or ""
            if not after:
                return rows

    def device(self, device_id: str) -> dict[str, Any] | None:
        from urllib.parse import quote

        try:
            info = self._call("GET", f"/devices/{quote(device_id, safe='')}")
        except FleetctlError as exc:
            if exc.code == Exit.NOT_FOUND:
                return None
            raise
        return {"device": info.pop("id"), **info}

    def list_alerts(self, include_cleared: bool = False) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            page = self._call(
                "GET", f"/alerts?active={'all' if include_cleared else 'true'}&limit=1000&offset={len(rows)}"
            )
            for r in page["alerts"]:
                ack = r.get("acknowledged") or {}
                rows.append(
                    {**r, "acked_by": ack.get("by"), "acked_at": ack.get("at"), "ack_note": ack.get("note")}
                )
            if not page["alerts"] or len(rows) >= int(page.get("total", 0)):
                return rows

    def sessions(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        from urllib.parse import quote

        return list(
            self._call("GET", f"/devices/{quote(device_id, safe='')}/sessions?limit={limit}")["sessions"]
        )

    def ack_alert(self, device: str, code: str, by: str, note: str = "") -> dict[str, Any]:
        """Acknowledged as the token's identity (the API records who), ``by`` is not sent."""
        from urllib.parse import quote

        key = f"device:{device}:{code}" if device else f"fleet:{code}"
        alert = self._call("POST", f"/alerts/{quote(key, safe='')}/ack", {"note": note})
        ack = alert.get("acknowledged") or {}
        return {"key": key, "by": ack.get("by", ""), "note": ack.get("note", note)}

    def close(self) -> None:
        pass


def open_store(args: argparse.Namespace, create: bool = False, announce: bool = False) -> Store:
    """The fleet store of the profile; a SQLite file that does not exist is an error unless ``create``
    (``fleetctl serve`` creates the store; a mistyped path must not silently make an empty one);
    ``announce``: say so on stderr when one is created."""
    from fleet.store import Store

    s = settings(args)
    if s.get("api") and not create:  # the API when the profile has one (like the rollout commands)
        return ApiStore(str(s.get("api")), str(s.get("token") or ""))  # type: ignore[return-value]
    url = str(s.get("db"))
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise FleetctlError(
            Exit.NOT_FOUND,
            f"no fleet store at {path} ({s.source('db')}): fleetctl serve creates it; "
            "check --db, FLEET_DB or the profile's db",
        )
    if path is not None and create and not path.parent.is_dir():
        raise FleetctlError(Exit.USAGE, f"fleet store {path}: directory {path.parent} does not exist")
    new = path is not None and not path.exists()
    store = Store(url, prefix=str(s.get("db_prefix") or ""))
    if new and announce:
        print(f"fleetctl: created a new fleet store at {path} ({s.source('db')})", file=sys.stderr)
    return store


def identities(s: Settings) -> dict[str, dict[str, Any]]:
    """Provisioned identities (id -> name, location, group, ...) from the state directory, if it has any."""
    state = Path(str(s.get("state_dir") or ""))
    if not (state / "provisioning.db").exists():
        return {}
    from fleet.provisioning.store import ProvisioningStore

    try:
        return {d["id"]: d for d in ProvisioningStore(state).devices()}
    except (OSError, PermissionError):
        return {}


def match(text: str, ids: list[str], idents: dict[str, dict[str, Any]]) -> list[str]:
    """Device ids ``text`` names: an exact id, else an exact name (case-insensitive), else a unique
    id or name prefix. Several ids for an ambiguous prefix; none when nothing matches."""
    known = list(dict.fromkeys([*ids, *idents]))
    if text in known:
        return [text]
    low = text.lower()
    names = [i for i in known if str(idents.get(i, {}).get("name") or "").lower() == low]
    if names:
        return names
    return [
        i
        for i in known
        if i.startswith(text) or str(idents.get(i, {}).get("name") or "").lower().startswith(low)
    ]


def label(device: str, idents: dict[str, dict[str, Any]]) -> str:
    ident = idents.get(device) or {}
    extra = ", ".join(str(v) for v in (ident.get("name"), ident.get("location")) if v)
    return f"{device} ({extra})" if extra else device


def resolve(args: argparse.Namespace, text: str, store: Store | None = None, required: bool = True) -> str:
    """The device id ``text`` names (see :func:`match`), looked up in the fleet store and the
    provisioning registry. Ambiguous: usage error listing the candidates. Unknown: not found when
    ``required``; else (MQTT commands without a store) ``text`` itself, for the broker to judge."""
    s = settings(args)
    idents = identities(s)
    ids: list[str] = []
    where = []
    own = None
    if store is None:
        path = sqlite_path(str(s.get("db")))
        if s.get("api") or path is None or path.exists():
            try:
                own = store = open_store(args)
            except FleetctlError:
                store = None
            except Exception:  # an unreachable database must not stop an MQTT command  # noqa: BLE001
                store = None
    try:
        if store is not None:
            rows = store.list_devices()
            ids = [r["device"] for r in rows]
            if isinstance(store, ApiStore):
                where.append(f"the fleet API {s.get('api')}")  # it gives each device's provisioned name
                idents = {**{r["device"]: {"name": r.get("name")} for r in rows if r.get("name")}, **idents}
            else:
                where.append(f"the fleet store {redact_url(str(s.get('db')))}")
    except Exception:  # noqa: BLE001 -- a store we opened for an MQTT command: the broker decides
        if own is None:
            raise
        ids = []
    finally:
        if own is not None:
            own.close()
    if idents:
        where.append(f"the provisioning registry in {s.get('state_dir')}")
    found = match(text, ids, idents)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        shown = ", ".join(label(d, idents) for d in found[:8]) + (" ..." if len(found) > 8 else "")
        raise FleetctlError(Exit.USAGE, f"{text!r} matches {len(found)} devices: {shown}")
    if required:
        raise FleetctlError(
            Exit.NOT_FOUND,
            f"no device {text!r} in {' or '.join(where) or 'the fleet store'} (fleetctl devices lists them)",
        )
    return text  # an MQTT command: the broker's retained status decides (fleet.lookup.reachable)


def ago(ts: float | None) -> str:
    """``12s ago``, ``5m ago``, ``3.2h ago``, ``4d ago`` (``-`` for none)."""
    if not ts:
        return "-"
    d = max(0.0, time.time() - float(ts))
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    if d < 172800:
        return f"{d / 3600:.1f}h ago"
    return f"{d / 86400:.0f}d ago"


async def connect(args: argparse.Namespace, what: str, timeout: float = 10.0) -> FleetClient:
    """A connected :class:`FleetClient` on the profile's broker; one-line errors (exit 2 or 3)."""
    from fleet.client import FleetClient

    url, ca, cert, key = settings(args).mqtt(what)
    client = FleetClient(url, ca_file=ca, cert_file=cert, key_file=key)
    try:
        await client.connect(timeout=timeout, fail_fast=True)
    except ConnectionError as exc:
        raise FleetctlError(Exit.UNREACHABLE, str(exc)) from None
    return client


async def reachable(client: FleetClient, device: str, wait: bool, timeout: float) -> None:
    """Fail at once for a device the broker has no status of (never connected, or the wrong
    broker: exit 4) or one that is offline (exit 5); with ``wait``, wait up to ``timeout`` s for it."""
    status = await client.device_status(device)
    if status is not None and status.get("online"):
        return
    if wait:
        status = await client.wait_online(device, timeout) or status
        if status is not None and status.get("online"):
            return
    url = client.options.url
    if status is None:
        raise FleetctlError(
            Exit.NOT_FOUND,
            f"no device {device!r} on {url}: it never connected to this broker (wrong broker, or a typo?)"
            + (f"; waited {timeout:g} s" if wait else ""),
        )
    reason = status.get("reason") or ""
    since = ago(status.get("ts"))
    raise FleetctlError(
        Exit.DEVICE,
        f"{device} is offline (since {since}{', ' + reason if reason else ''})"
        + (f"; it did not come online within {timeout:g} s" if wait else "; --wait waits for it"),
    )
