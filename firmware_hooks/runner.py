"""Runs OTA lifecycle hooks: executables called with the phase, a timeout and a known environment.

A hook is any executable file in a hooks directory. Each is run as ``HOOK PHASE`` for every
phase (``download verify install switch trial commit rollback failure``) and ignores the phases
it does not handle. Exit codes follow Mender's state scripts: 0 go on, 21 retry later (a few
times, with a pause), anything else aborts the update and rolls back. Output goes to the log;
the last 4 KiB of stderr is kept in the error so the fleet sees why.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PHASES = ("download", "verify", "install", "switch", "trial", "commit", "rollback", "failure")
EXIT_RETRY = 21
STDERR_CAP = 4096
PACKAGED_HOOKS = Path(__file__).resolve().parent / "hooks"


class HookFailed(Exception):
    """A hook exited non-zero or timed out; ``stderr`` is its capped error output."""

    def __init__(self, hook: str, phase: str, reason: str, stderr: str = "") -> None:
        super().__init__(
            f"hook {hook} failed in {phase}: {reason}" + (f": {stderr.strip()[-300:]}" if stderr else "")
        )
        self.hook, self.phase, self.reason, self.stderr = hook, phase, reason, stderr


@dataclass
class HookResult:
    hook: str
    phase: str
    returncode: int
    seconds: float
    stderr: str


def discover(dirs: Iterable[Path | str | None]) -> list[Path]:
    """Executable regular files of each existing directory, in name order per directory."""
    hooks: list[Path] = []
    for d in dirs:
        if not d:
            continue
        d = Path(d)
        if not d.is_dir():
            continue
        for path in sorted(d.iterdir()):
            if path.is_file() and os.access(path, os.X_OK) and not path.name.startswith("."):
                hooks.append(path)
    return hooks


def run_hook(
    hook: Path,
    phase: str,
    env: Mapping[str, str],
    timeout_s: float = 300.0,
    retries: int = 3,
    retry_delay_s: float = 1.0,
) -> HookResult:
    """Run one hook for one phase; raises HookFailed on non-zero exit or timeout."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    full_env = {**os.environ, **env, "OTA_PHASE": phase}
    for attempt in range(retries + 1):
        start = time.monotonic()
        proc = subprocess.Popen(
            [str(hook), phase],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise HookFailed(
                hook.name,
                phase,
                f"timed out after {timeout_s:g} s",
                err.decode(errors="replace")[-STDERR_CAP:],
            ) from None
        seconds = time.monotonic() - start
        stderr = err.decode(errors="replace")[-STDERR_CAP:]
        for line in out.decode(errors="replace").splitlines():
            log.info("hook %s %s: %s", hook.name, phase, line)
        for line in stderr.splitlines():
            log.warning("hook %s %s (stderr): %s", hook.name, phase, line)
        if proc.returncode == 0:
            return HookResult(hook.name, phase, 0, seconds, stderr)
        if proc.returncode == EXIT_RETRY and attempt < retries:
            log.info("hook %s asked to retry %s later (%d/%d)", hook.name, phase, attempt + 1, retries)
            time.sleep(retry_delay_s)
            continue
        reason = f"exit {proc.returncode}" + (" (retries exhausted)" if proc.returncode == EXIT_RETRY else "")
        raise HookFailed(hook.name, phase, reason, stderr)
    raise AssertionError("unreachable")  # pragma: no cover


def run_phase(
    hooks: Iterable[Path], phase: str, env: Mapping[str, str], timeout_s: float = 300.0
) -> list[HookResult]:
    """Run every hook for ``phase`` in order; the first failure stops and raises."""
    return [run_hook(h, phase, env, timeout_s) for h in hooks]
