"""Provisioning pieces without a broker: tokens, CA checks, broker-certificate checks, clock
checks, crash-safe renewal swaps, file permissions, QR codes."""

from __future__ import annotations

import datetime as dt
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from fleet.provisioning.ca import CAError, FleetCA
from fleet.provisioning.store import ClaimRefused, ProvisioningStore
from ota.atomic import write_atomic
from provisioning.claim import ProvisionError, check_clock_floor, check_skew, verify_broker_cert
from provisioning.identity import IdentityError, IdentityStore
from provisioning.provision import ProvisionRequest, provision
from provisioning.token import ClaimToken, TokenFormatError, ca_pin, parse_qr, qr_payload


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "fleet")


def test_token_roundtrip_and_forgiving_parse(ca: FleetCA) -> None:
    t = ClaimToken.new(ca.cert_der)
    assert t.pin == ca_pin(ca.cert_der)
    assert ClaimToken.parse(str(t)) == t
    assert ClaimToken.parse("  " + str(t).upper() + " ") == t
    assert parse_qr(qr_payload(t, "fleet.example:8884")) == (t, "fleet.example:8884")
    for bad in ("", "abc", str(t)[:-1], str(t).replace(".", "-", 1), str(t)[:5] + "0" + str(t)[6:]):
        with pytest.raises(TokenFormatError):
            ClaimToken.parse(bad)


def test_store_refuses_unknown_used_expired_and_audits(tmp_path: Path, ca: FleetCA) -> None:
    store = ProvisioningStore(tmp_path / "fleet")
    (t,) = store.create_claims("g", 60, 1, ca.cert_der)
    with pytest.raises(ClaimRefused, match="bad_token"):
        store.check_claim(t.id, "x" * 20)
    with pytest.raises(ClaimRefused, match="expired_token"):
        store.check_claim(t.id, t.secret, now=time.time() + 61)
    claim = store.check_claim(t.id, t.secret)
    now = dt.datetime.now(dt.UTC)
    store.redeem(claim, "dev-1", {}, 1, now, now)
    with pytest.raises(ClaimRefused, match="used_token"):
        store.redeem(claim, "dev-2", {}, 2, now, now)  # the race: a second responder loses
    with pytest.raises(ClaimRefused, match="used_token"):
        store.check_claim(t.id, t.secret)
    codes = [a["detail"].get("code") for a in store.audit_log(t.id) if a["event"] == "claim_refused"]
    assert codes == ["bad_token", "expired_token", "used_token", "used_token"]
    assert store.device("dev-1")["group"] == "g" and store.device("dev-2") is None


def _csr(key, cn: str = "whoever") -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def test_ca_signs_only_valid_p256_csrs_and_sets_the_cn(ca: FleetCA) -> None:
    cert = ca.sign_csr(_csr(ec.generate_private_key(ec.SECP256R1()), "fleet-service"), "dev-abc")
    # not what was asked
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-abc"
    cert.verify_directly_issued_by(ca.cert)
    with pytest.raises(CAError, match="P-256"):
        ca.sign_csr(_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "dev-x")
    with pytest.raises(CAError, match="P-256"):
        ca.sign_csr(_csr(ec.generate_private_key(ec.SECP384R1())), "dev-x")
    with pytest.raises(CAError):
        ca.sign_csr(b"not a csr", "dev-x")
    with pytest.raises(CAError, match="already exists"):
        FleetCA.init(ca.directory.parent)


def test_broker_certificate_checks_before_the_secret_is_sent(ca: FleetCA, tmp_path: Path) -> None:
    _, server = ca.issue_server(["127.0.0.1", "fleet.example"])
    der = server.public_bytes(serialization.Encoding.DER)
    now = time.time()
    verify_broker_cert(der, ca.cert, "127.0.0.1", now)
    verify_broker_cert(der, ca.cert, "FLEET.example", now)
    with pytest.raises(ProvisionError, match="not 'other.example'"):
        verify_broker_cert(der, ca.cert, "other.example", now)
    rogue = FleetCA.init(tmp_path / "rogue")
    _, fake = rogue.issue_server(["127.0.0.1"])
    with pytest.raises(ProvisionError, match="not issued by the fleet CA"):
        verify_broker_cert(fake.public_bytes(serialization.Encoding.DER), ca.cert, "127.0.0.1", now)
    with pytest.raises(ProvisionError) as e:
        verify_broker_cert(der, ca.cert, "127.0.0.1", now - 86400)  # device clock a day behind
    assert e.value.kind == "clock" and e.value.exit_code == 5


def test_clock_checks() -> None:
    check_clock_floor(time.time())
    with pytest.raises(ProvisionError, match="cannot be right"):
        check_clock_floor(86400.0)
    check_skew(1000.0, 1100.0)
    with pytest.raises(ProvisionError, match="behind"):
        check_skew(1000.0, 2000.0)


def test_write_atomic_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        p = write_atomic(tmp_path / "k", b"secret", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["k"]


def _identity(tmp_path: Path, ca: FleetCA) -> IdentityStore:
    store = IdentityStore(tmp_path / "id")
    key = store.new_key()
    cert = ca.sign_csr(store.csr(key), "dev-1")
    store.save(cert.public_bytes(serialization.Encoding.PEM), ca.cert_pem, {"device_id": "dev-1"})
    return store


@pytest.mark.parametrize("cut", ["after_crt_new", "after_key_new", "after_key_swap", "pending_only"])
def test_renewal_swap_survives_power_loss_at_each_step(tmp_path: Path, ca: FleetCA, cut: str) -> None:
    store = _identity(tmp_path, ca)
    old_serial = store.load().cert.serial_number
    pending = store.dir / "device.key.pending"
    new_key = store.new_key(pending)
    new_cert = ca.sign_csr(store.csr(new_key), "dev-1").public_bytes(serialization.Encoding.PEM)
    if cut != "pending_only":
        write_atomic(store.dir / "device.crt.new", new_cert)
    if cut in ("after_key_new", "after_key_swap"):
        os.replace(pending, store.dir / "device.key.new")
    if cut == "after_key_swap":
        os.replace(store.dir / "device.key.new", store.key_path)
    ident = IdentityStore(store.dir).load()  # recover() runs here, as after a reboot
    renewed = ident.cert.serial_number != old_serial
    assert renewed == (cut != "pending_only")  # key and cert always match (load checks it)
    assert sorted(p.name for p in store.dir.iterdir()) == [
        "ca.crt",
        "device.crt",
        "device.key",
        "identity.json",
    ]
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600


def test_identity_mismatch_is_reported(tmp_path: Path, ca: FleetCA) -> None:
    store = _identity(tmp_path, ca)
    store.new_key()  # a key that does not match the certificate
    with pytest.raises(IdentityError, match="does not match"):
        store.load()


async def test_broken_config_stops_provisioning_before_anything_changes(tmp_path: Path, ca: FleetCA) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[audio]\nrate = 'fast'\n")
    req = ProvisionRequest(
        ClaimToken.new(ca.cert_der), "127.0.0.1:1", cfg, identity_dir=tmp_path / "id", say=lambda s: None
    )
    with pytest.raises(ProvisionError, match="audio.rate"):
        await provision(req)
    assert cfg.read_text() == "[audio]\nrate = 'fast'\n" and not (tmp_path / "id").exists()


def test_claim_qr_png(tmp_path: Path, ca: FleetCA) -> None:
    from fleet.provisioning.qr import terminal, write_png

    t = ClaimToken.new(ca.cert_der)
    old_umask = os.umask(0o022)  # the default umask would make it world-readable
    try:
        png = write_png(qr_payload(t, "h:8884"), tmp_path / "qr" / "q.png")
    finally:
        os.umask(old_umask)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(png.stat().st_mode) == 0o600  # it holds the claim secret
    assert [p.name for p in (tmp_path / "qr").iterdir()] == ["q.png"]  # no temp file left behind
    assert len(terminal(str(t)).splitlines()) > 10


def test_key_is_owned_by_the_service_user(tmp_path: Path) -> None:
    import pwd

    from provisioning.identity import service_owner

    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    owner = service_owner("nobody")
    assert owner == (pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    store = IdentityStore(tmp_path / "id", owner=owner)
    store.new_key()
    st = store.key_path.stat()
    assert (st.st_uid, st.st_gid) == owner and stat.S_IMODE(st.st_mode) == 0o600
    assert store.dir.stat().st_uid == owner[0] and stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert service_owner("no-such-user-here") is None


async def test_responder_repeats_the_answer_for_the_same_key_only(tmp_path: Path, ca: FleetCA) -> None:
    """A device re-sends its request when no answer came: the same key gets the same certificate,
    any other key is refused (the token stays single use)."""
    import json

    from fleet.provisioning.responder import ClaimResponder

    state = ca.directory.parent
    (t,) = ProvisioningStore(state).create_claims("g", 60, 1, ca.cert_der)
    r = ClaimResponder(state, "127.0.0.1", 1)
    key = ec.generate_private_key(ec.SECP256R1())
    req = json.dumps({"token": str(t), "csr": _csr(key).decode(), "device_time": time.time()}).encode()
    topic, first = await r.handle(f"claim/{t.id}/req", req)
    assert topic == f"claim/{t.id}/res" and first["ok"], first
    _, again = await r.handle(f"claim/{t.id}/req", req)
    assert again["ok"] and again["certificate"] == first["certificate"]
    other = json.dumps(
        {"token": str(t), "csr": _csr(ec.generate_private_key(ec.SECP256R1())).decode()}
    ).encode()
    _, refused = await r.handle(f"claim/{t.id}/req", other)
    assert refused == {"ok": False, "error": refused["error"], "server_time": refused["server_time"]}
    assert refused["error"]["code"] == "used_token"
    _, bad = await r.handle(f"claim/{t.id}/req", b"\xff not json")
    assert bad["error"]["code"] == "bad_request"
    assert len(ProvisioningStore(state).devices()) == 1
