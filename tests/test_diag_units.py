"""Unit-level checks of diagnostics pieces: structured logging, redaction, journald parsing, reassembly."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
import time

import pytest

from device_agent.config import ConfigError, LoggingSection, config_from_dict
from device_agent.diag.logsource import LogQuery, collect_logs
from device_agent.diag.redact import Redactor, redact_text
from device_agent.diag.timeparse import parse_time
from device_agent.diag.transfer import Transfer, decode_chunk
from device_agent.logging_setup import LogContext, iso_ts, log_session, setup_logging
from fleet.log_pull import Reassembler, TransferError


def _logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    return logger


def test_json_logs_carry_device_boot_and_session_and_are_pullable(tmp_path):
    section = LoggingSection(level="info", json=True, file=str(tmp_path / "agent.log"))
    ctx = LogContext("cam-17", "b00tb00t")
    root = _logger("diagtest.json")
    stream = io.StringIO()
    handlers = setup_logging(section, ctx, stream=stream, root=root)
    try:
        root.info("plain record")
        with log_session(ctx, "sess-42"):
            root.warning("in a session password=%s", "topsecret")
        root.debug("below the level")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            root.exception("failed")
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["msg"] for r in records][:2] == ["plain record", "in a session password=topsecret"]
    assert all(r["device"] == "cam-17" and r["boot"] == "b00tb00t" for r in records)
    assert "session" not in records[0] and records[1]["session"] == "sess-42"
    assert records[2]["level"] == "error" and "RuntimeError: boom" in records[2]["exc"]
    assert len(records) == 3
    # the same file pulled with a level filter: JSON lines are parsed, and redacted on the way out
    bundle = collect_logs(LogQuery(level="warning"), log_file=section.file, journalctl="", unit="")
    pulled = [json.loads(x) for x in bundle.data.decode().splitlines()]
    assert [r["msg"] for r in pulled] == ["in a session password=[REDACTED]", "failed"]


def test_plain_logs_and_rotation(tmp_path):
    section = LoggingSection(
        level="debug", json=False, file=str(tmp_path / "a.log"), file_max_bytes=65536, file_backups=2
    )
    ctx = LogContext("dev1", "boot1")
    root = _logger("diagtest.plain")
    handlers = setup_logging(section, ctx, stream=io.StringIO(), root=root)
    try:
        for i in range(2000):
            root.info("line %05d %s", i, "x" * 60)
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["a.log", "a.log.1", "a.log.2"]
    text = collect_logs(LogQuery(), log_file=section.file, journalctl="", unit="").data.decode()
    numbers = [int(line.split("line ")[1][:5]) for line in text.splitlines()]
    assert numbers == sorted(numbers) and numbers[-1] == 1999  # oldest rotation first, newest last
    assert " INFO diagtest.plain [dev1 boot1]: line 01999" in text


def test_journald_entries_are_parsed(tmp_path):
    """journalctl cannot run in this container: a script stands in for its documented `-o json` output."""
    now = time.time()
    entries = [
        {
            "__REALTIME_TIMESTAMP": str(int((now - 10) * 1e6)),
            "PRIORITY": "3",
            "MESSAGE": "camera gone",
            "SYSLOG_IDENTIFIER": "device-agent",
        },
        {
            "__REALTIME_TIMESTAMP": str(int((now - 5) * 1e6)),
            "PRIORITY": "6",
            "MESSAGE": list(b"token=abc123 bytes"),
        },
        {"__REALTIME_TIMESTAMP": str(int((now - 4) * 1e6)), "PRIORITY": "7", "MESSAGE": "debug"},
    ]
    fake = tmp_path / "journalctl"
    args_file = tmp_path / "args.json"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"json.dump(sys.argv[1:], open({str(args_file)!r}, 'w'))\n"
        f"for e in {entries!r}: print(json.dumps(e))\n"
    )
    fake.chmod(0o755)
    bundle = collect_logs(
        LogQuery(since=now - 60, level="info"), log_file="", journalctl=str(fake), unit="device-agent.service"
    )
    lines = bundle.data.decode().splitlines()
    assert len(lines) == 2
    assert " ERROR journal/device-agent: camera gone" in lines[0]
    assert lines[1].endswith("token=[REDACTED] bytes")
    args = json.loads(args_file.read_text())
    assert (
        args[:4] == ["-o", "json", "--no-pager", "-u"]
        and "device-agent.service" in args
        and "--since" in args
    )
    assert bundle.sources[0]["status"] == "ok"
    missing = collect_logs(LogQuery(), log_file="", journalctl=str(tmp_path / "nope"), unit="x.service")
    assert missing.sources[0]["status"] == "skipped" and missing.data == b""


@pytest.mark.parametrize(
    "line, secret",
    [
        ('[mqtt]\npassword = "pa55word!"', "pa55word!"),
        ("wpa_passphrase=correcthorse", "correcthorse"),
        ('network={ ssid="home" psk="battery staple" }', "battery staple"),
        ("curl -H 'Authorization: Bearer abcdef0123456789'", "abcdef0123456789"),
        ('{"client_secret": "s3cr3t\\"quoted"}', "s3cr3t"),
        ("AWS AKIAABCDEFGHIJKLMNOP used", "AKIAABCDEFGHIJKLMNOP"),
        ("https://bob:hunter2@example.com/x", "hunter2"),
        ("api_key: 1234-5678", "1234-5678"),
        ("MQTT_TOKEN=eyJhbGciOi.eyJzdWIiOi.c2lnbmF0", "eyJhbGciOi"),
        ("journal/device-agent.service: token=abc123 bytes", "abc123"),  # a pair inside a pair's value
        ('{"ts": "x", "msg": "loaded password=hunter2 ok"}', "hunter2"),  # inside a JSON log line
        ("config dump: wifi.psk = 'sesame open'", "sesame open"),
        ("mqtt key=abc123 signing_key: zz99", "abc123"),
        ("mqtt key=abc123 signing_key: zz99", "zz99"),
    ],
)
def test_redaction_patterns(line, secret):
    out = "\n".join(redact_text(part) for part in line.split("\n"))
    assert secret not in out and "[REDACTED]" in out


def test_redaction_leaves_ordinary_lines_and_paths():
    for line in (
        "frame 12 encoded, bitrate=2000000",
        'key_file = "/etc/device-agent/device.key"',
        "keyframe forced for viewer 3",
    ):
        assert redact_text(line) == line


def test_pem_block_across_lines():
    r = Redactor()
    out = [
        r.line(x)
        for x in (
            "cert follows",
            "-----BEGIN CERTIFICATE-----",
            "MIIBAAAA",
            "-----END CERTIFICATE-----",
            "after",
        )
    ]
    assert out == ["cert follows", "[REDACTED PEM BLOCK]", None, "[REDACTED PEM BLOCK]", "after"]


def test_time_parsing():
    now = 1_800_000_000.0
    assert parse_time("2h", now) == now - 7200
    assert parse_time("30m", now) == now - 1800
    assert parse_time("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_time(12.5) == 12.5 and parse_time(None) is None
    for bad in ("soon", "2x", True):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_reassembler_rejects_foreign_and_corrupt_chunks():
    blob = b"hello world" * 500
    t = Transfer("r1", "logs", blob, 1024)
    asm = Reassembler("r1")
    for seq in range(t.total):
        header, body = decode_chunk(t.chunk(seq))
        if seq == 2:
            body = b"X" + body[1:]  # corrupted in transit
        asm.add(header, body)
    other = Transfer("r2", "logs", b"other", 1024)
    assert not asm.add(*decode_chunk(other.chunk(0)))
    assert asm.complete()
    with pytest.raises(TransferError) as info:
        asm.assemble()
    assert info.value.code == "checksum"
    asm.add(*decode_chunk(t.chunk(2)))  # a re-sent good copy
    assert asm.assemble() == blob and hashlib.sha256(blob).hexdigest() == asm.sha256


def test_diagnostics_config_is_validated():
    with pytest.raises(ConfigError, match="diagnostics.snapshot_width"):
        config_from_dict({"diagnostics": {"snapshot_width": 641}})
    with pytest.raises(ConfigError, match="diagnostics.chunk_bytes"):
        config_from_dict({"diagnostics": {"chunk_bytes": 10}})
    with pytest.raises(ConfigError, match="logging.file_backups"):
        config_from_dict({"logging": {"file_backups": -1}})
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"diagnostics": {"shell": "yes"}})


def test_device_agent_diag_netcheck_cli(tmp_path, mosquitto, capsys):
    from device_agent.cli import main
    from device_agent.config import dump_toml

    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        dump_toml(
            {"device": {"id": "cli-dev", "state_dir": str(tmp_path / "s")}, "mqtt": {"url": mosquitto.url}}
        )
    )
    assert main(["diag", "netcheck", "--config", str(cfg), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {c["name"]: c["status"] for c in result["checks"]} == {
        "dns": "pass",
        "tcp": "pass",
        "tls": "skip",
        "mqtt_loss": "skip",
    }
    mosquitto.stop()
    assert main(["diag", "netcheck", "--config", str(cfg)]) == 1
    assert "FAIL" in capsys.readouterr().out


def _fake_journalctl(tmp_path, body: str):
    fake = tmp_path / "journalctl"
    fake.write_text(f"#!{sys.executable}\nimport json, sys, time\n{body}\n")
    fake.chmod(0o755)
    return str(fake)


def test_size_cap_keeps_the_newest_lines_across_journal_and_files(tmp_path):
    """Journal and file lines interleave in time: the cap drops the oldest of both, not the journal first."""
    base = 1_700_000_000.0
    log = tmp_path / "agent.log"
    log.write_text("".join(f"{iso_ts(base + 2 * i)} INFO file: f{i:03d} {'x' * 40}\n" for i in range(100)))
    entries = [
        {
            "__REALTIME_TIMESTAMP": str(int((base + 2 * i + 1) * 1e6)),
            "PRIORITY": "6",
            "MESSAGE": f"j{i:03d} {'y' * 40}",
        }
        for i in range(100)
    ]
    fake = _fake_journalctl(tmp_path, f"for e in {entries!r}: print(json.dumps(e))")
    full = collect_logs(LogQuery(), log_file=str(log), journalctl=fake, unit="u.service")
    assert full.lines == 200 and not full.truncated
    cap = len(full.data) // 4
    bundle = collect_logs(LogQuery(max_bytes=cap), log_file=str(log), journalctl=fake, unit="u.service")
    assert bundle.truncated and len(bundle.data) <= cap
    assert bundle.dropped_bytes == len(full.data) - len(bundle.data)
    tags = [line.split(": ", 1)[1][:4] for line in bundle.data.decode().splitlines()]
    # the newest quarter of both sources, in time order: ..., j098, f099, j099
    assert tags[-3:] == ["j098", "f099", "j099"]
    assert {t[0] for t in tags} == {"f", "j"}
    assert len(tags) >= 45 and abs(sum(t[0] == "f" for t in tags) - sum(t[0] == "j" for t in tags)) <= 1
    times = [int(t[1:]) * 2 + (t[0] == "j") for t in tags]
    assert times == sorted(times) and times[-1] == 199


def test_journalctl_stderr_flood_and_hang_do_not_block_the_pull(tmp_path):
    # 1 MB on stderr before any stdout: with a stderr pipe nobody reads, this deadlocked
    fake = _fake_journalctl(
        tmp_path,
        "sys.stderr.write('e' * 1_000_000); sys.stderr.flush()\n"
        "print(json.dumps({'__REALTIME_TIMESTAMP': '1700000000000000', "
        "'MESSAGE': 'after the flood'}))",
    )
    bundle = collect_logs(LogQuery(), log_file="", journalctl=fake, unit="u.service", journal_timeout=20)
    assert bundle.sources[0]["status"] == "ok" and b"after the flood" in bundle.data
    hung = _fake_journalctl(
        tmp_path,
        "print(json.dumps({'__REALTIME_TIMESTAMP': '1700000000000000', "
        "'MESSAGE': 'first'}), flush=True)\ntime.sleep(60)",
    )
    t0 = time.monotonic()
    bundle = collect_logs(LogQuery(), log_file="", journalctl=hung, unit="u.service", journal_timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert bundle.sources[0]["status"] == "error" and "timed out" in bundle.sources[0]["reason"]
    assert b"first" in bundle.data  # what arrived before the timeout is kept
