"""Collects the device's logs for a pull: its own log files and journald, filtered and redacted.

Filtering (time window, minimum level, substring) and redaction happen here, on the device. When
the result exceeds the size cap the *newest* lines are kept and the pull reports the truncation.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from device_agent.diag.redact import Redactor
from device_agent.logging_setup import iso_ts

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50, "fatal": 50}
_JSON_LEVEL = re.compile(r'"level"\s*:\s*"(\w+)"')
_JSON_TS = re.compile(r'"ts"\s*:\s*("[^"]*"|-?\d+(?:\.\d+)?)')
_JOURNAL_PRIORITY = {0: 50, 1: 50, 2: 50, 3: 40, 4: 30, 5: 20, 6: 20, 7: 10}


@dataclass
class LogQuery:
    """What to pull. Times are epoch seconds; ``level`` is the minimum level name."""

    since: float | None = None
    until: float | None = None
    level: str = "debug"
    grep: str = ""
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.level.lower() not in LEVELS:
            raise ValueError(f"unknown level {self.level!r} (debug, info, warning, error, critical)")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since is after until")


@dataclass
class LogBundle:
    """The collected text plus what it took to make it."""

    data: bytes
    lines: int
    truncated: bool
    dropped_bytes: int
    redacted_lines: int
    sources: list[dict[str, Any]] = field(default_factory=list)


def log_files(path: str) -> list[Path]:
    """The log file and its rotations, oldest first (``file.N`` .. ``file.1``, ``file``)."""
    if not path:
        return []
    base = Path(path)
    rotated = (
        sorted(
            (p for p in base.parent.glob(base.name + ".*") if p.suffix[1:].isdigit()),
            key=lambda p: -int(p.suffix[1:]),
        )
        if base.parent.is_dir()
        else []
    )
    return [*rotated, *([base] if base.exists() else [])]


def _parse_meta(line: str, need_time: bool = True) -> tuple[float | None, int | None]:
    """Timestamp and level of one of our log lines (JSON or plain); ``None`` when not a record start.

    Without ``need_time`` the timestamp is only recognised, not parsed (``0.0``): a pull without a
    time window stays cheap on 50 MB of logs.
    """
    if line.startswith("{"):  # a JSON line: read ts and level without parsing the whole record
        lm = _JSON_LEVEL.search(line)
        tm = _JSON_TS.search(line)
        if lm is None and tm is None:
            return None, None
        level = LEVELS.get(lm.group(1).lower()) if lm else None
        if tm is None:
            return None if need_time else 0.0, level
        raw = tm.group(1)
        when = (float(raw) if raw[0] != '"' else _iso(raw[1:-1])) if need_time else 0.0
        return when, level
    head = line[:40].split(" ", 2)
    if len(head) < 2 or len(head[0]) < 19 or head[0][4:5] != "-":
        return None, None
    return (_iso(head[0]) if need_time else 0.0), LEVELS.get(head[1].lower())


def _iso(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _Collector:
    """Applies the query and the size cap to one source's lines while they stream in.

    Lines are kept as records (a record's first line plus its continuation lines) with the
    record's timestamp, so :func:`_merge_newest` can merge several sources by time.
    """

    def __init__(self, query: LogQuery, redactor: Redactor) -> None:
        self.q = query
        self.min_level = LEVELS[query.level.lower()]
        self.needle = query.grep.lower()
        self.redactor = redactor
        self.kept: collections.deque[list[Any]] = collections.deque()  # [when | None, [line bytes, ...]]
        self.lines = 0
        self.size = 0
        self.dropped = 0
        self.truncated = False

    def add_record(self, when: float | None, level: int | None, text: str, *, sort_time: bool = True) -> bool:
        """A record's first line; ``sort_time`` False: ``when`` is not the real time (parsed lazily)."""
        if when is not None:
            if self.q.since is not None and when < self.q.since:
                return False
            if self.q.until is not None and when > self.q.until:
                return False
        if level is not None and level < self.min_level:
            return False
        if self.needle and self.needle not in text.lower():
            return False
        self.kept.append([when if sort_time else None, []])
        self.add_continuation(text)
        return True

    def add_continuation(self, text: str) -> None:
        """A line belonging to the record before it (traceback, multi-line message): kept with it."""
        redacted = self.redactor.line(text)
        if redacted is None:
            return
        raw = (redacted + "\n").encode("utf-8", "replace")
        if not self.kept:
            self.kept.append([None, []])
        self.kept[-1][1].append(raw)
        self.lines += 1
        self.size += len(raw)
        while self.size > self.q.max_bytes and self.kept:
            self.truncated = True
            old = self.kept.popleft()
            n = sum(len(x) for x in old[1])
            self.lines -= len(old[1])
            self.size -= n
            self.dropped += n


def _record_time(rec: list[Any], newer: float) -> float:
    """A record's timestamp, parsed now if it was not while streaming; ``newer`` when unknown."""
    if rec[0] is None and rec[1]:
        rec[0] = _parse_meta(rec[1][0].decode("utf-8", "replace"), True)[0]
    return newer if rec[0] is None else min(rec[0], newer)


def _merge_newest(cols: list[_Collector], cap: int) -> tuple[list[bytes], int, bool]:
    """Merge the sources (each already oldest-first) by time and keep the newest ``cap`` bytes.

    Returns (lines oldest first, dropped bytes, truncated). Within the cap nothing needs sorting
    and the sources are concatenated; over it, records are taken newest first across sources.
    """
    dropped = sum(c.dropped for c in cols)
    truncated = any(c.truncated for c in cols)
    if sum(c.size for c in cols) <= cap:
        return [line for c in cols for rec in c.kept for line in rec[1]], dropped, truncated
    idx = [len(c.kept) - 1 for c in cols]
    last = [float("inf")] * len(cols)
    picked: list[list[bytes]] = []
    size = 0
    while True:
        best, best_t = -1, float("-inf")
        for i, c in enumerate(cols):
            if idx[i] >= 0:
                t = _record_time(c.kept[idx[i]], last[i])
                if t > best_t or best < 0:
                    best, best_t = i, t
        if best < 0:
            break
        rec = cols[best].kept[idx[best]]
        n = sum(len(x) for x in rec[1])
        if size + n > cap:
            break
        picked.append(rec[1])
        size += n
        last[best] = best_t
        idx[best] -= 1
    total = sum(c.size for c in cols)
    return [line for lines in reversed(picked) for line in lines], dropped + total - size, True


def _collect_file(path: Path, col: _Collector) -> int:
    """Feed one of our log files; continuation lines (tracebacks) share their record's fate."""
    count = 0
    keep_record = False
    need_time = col.q.since is not None or col.q.until is not None  # else parsed only to merge
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            when, level = _parse_meta(line, need_time)
            if when is None and level is None:
                if keep_record:
                    col.add_continuation(line)
                continue
            keep_record = col.add_record(when, level, line, sort_time=need_time)
            count += keep_record
    return count


def _collect_journal(journalctl: str, unit: str, col: _Collector, timeout: float = 60.0) -> dict[str, Any]:
    exe = shutil.which(journalctl)
    if not exe or not unit:
        return {"source": "journald", "unit": unit, "status": "skipped", "reason": "journalctl not available"}
    cmd = [exe, "-o", "json", "--no-pager", "-u", unit]
    if col.q.since is not None:
        cmd += ["--since", f"@{col.q.since:.0f}"]
    if col.q.until is not None:
        cmd += ["--until", f"@{col.q.until:.0f}"]
    # stderr goes to a temporary file: a full stderr pipe would block journalctl (and us) forever
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                errors="replace",
                env={**os.environ, "SYSTEMD_PAGER": ""},
            )
        except OSError as exc:
            return {"source": "journald", "unit": unit, "status": "error", "reason": str(exc)}
        killer = threading.Timer(timeout, proc.kill)  # a hung journalctl must not hang the pull
        killer.start()
        try:
            count = _read_journal(proc, unit, col)
            rc = proc.wait(max(0.1, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        finally:
            killer.cancel()
            if proc.stdout:
                proc.stdout.close()
        err.seek(0)
        stderr = err.read(4096).decode("utf-8", "replace")
    if rc is None or rc < 0:
        return {
            "source": "journald",
            "unit": unit,
            "status": "error",
            "lines": count,
            "reason": f"journalctl timed out after {timeout:.0f} s",
        }
    if rc != 0:
        return {
            "source": "journald",
            "unit": unit,
            "status": "error",
            "reason": stderr.strip()[:300],
            "lines": count,
        }
    return {"source": "journald", "unit": unit, "status": "ok", "lines": count}


def _read_journal(proc: subprocess.Popen[str], unit: str, col: _Collector) -> int:
    """Feed journalctl's ``-o json`` lines into ``col``; returns the records kept."""
    count = 0
    assert proc.stdout is not None
    for raw in proc.stdout:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        when = int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6 or None
        try:
            level = _JOURNAL_PRIORITY.get(int(entry.get("PRIORITY", 6)), 20)
        except (TypeError, ValueError):
            level = 20
        msg = entry.get("MESSAGE", "")
        if isinstance(msg, list):  # journald sends non-UTF-8 messages as byte arrays
            msg = bytes(msg).decode("utf-8", "replace")
        name = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}[level]
        ident = entry.get("SYSLOG_IDENTIFIER") or unit
        for i, part in enumerate(str(msg).split("\n")):
            text = f"{iso_ts(when or 0)} {name} journal/{ident}: {part}" if i == 0 else part
            count += col.add_record(when, level, text)
    return count


def collect_logs(
    query: LogQuery, *, log_file: str, journalctl: str, unit: str, journal_timeout: float = 60.0
) -> LogBundle:
    """Blocking: gather, filter, redact and cap. Run it in a thread.

    The journal and the files are capped separately, then merged by time so that the newest
    lines of all sources together survive the cap.
    """
    redactor = Redactor()
    journal, files = _Collector(query, redactor), _Collector(query, redactor)
    sources = [_collect_journal(journalctl, unit, journal, journal_timeout)]
    for path in log_files(log_file):
        try:
            n = _collect_file(path, files)
            sources.append({"source": "file", "path": str(path), "status": "ok", "lines": n})
        except OSError as exc:
            sources.append({"source": "file", "path": str(path), "status": "error", "reason": str(exc)})
    lines, dropped, truncated = _merge_newest([journal, files], query.max_bytes)
    return LogBundle(
        data=b"".join(lines),
        lines=len(lines),
        truncated=truncated,
        dropped_bytes=dropped,
        redacted_lines=redactor.redacted_lines,
        sources=sources,
    )


def collect_compressed(query: LogQuery, log_file: str, journalctl: str, unit: str) -> tuple[bytes, LogBundle]:
    """Collect and gzip; returns the gzip blob and the bundle's figures (``data`` left empty).

    Meant for a worker *process*: filtering and redacting tens of MB in a thread of the agent holds
    the GIL and made the event loop (and live media with it) stall for hundreds of milliseconds.
    """
    import gzip

    bundle = collect_logs(query, log_file=log_file, journalctl=journalctl, unit=unit)
    blob = gzip.compress(bundle.data, 6, mtime=0)
    raw_len = len(bundle.data)
    bundle.data = b""
    bundle.sources.append({"source": "summary", "status": "ok", "raw_bytes": raw_len})
    return blob, bundle
