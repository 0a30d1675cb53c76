"""Power loss during an update: SIGKILL the updater (and its children) at every step boundary and
at >= 50 random points; each time the boot path must come up on a complete, working slot.

The updater is the real ``device-agent ota install`` in its own process group; a kill takes
the whole group (pip included), as a power cut would. After each kill the real boot check runs
with the system Python, then the release is run from ``current``: it must answer with the version
its slot's marker records, 1.0.0 (old) or 2.0.0 (new). The device is then put back on 1.0.0 (by
the real rollback when the kill came after the switch) and the next kill point runs a fresh
install over whatever the last one left behind. A final install runs to completion: no stale
lock, no stuck state.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from device_agent.config import load_config
from ota.installer import InstallOptions
from ota.layout import Layout, lock_holder
from ota.trial import rollback
from tests.support.ota_harness import PY, REPO, Device, make_bundle, provision

RANDOM_POINTS = 50
INSIDE_POINTS = 35  # of which at least this many inside venv..switch (copy, pip, seal, switch)
STEPS = ["lock", "verify", "prepare", "venv", "pip", "copy", "seal", "switch", "switched"]


def _start(dev: Device, bundle: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "device_agent.cli", "ota", "install", str(bundle), "--config", str(dev.config_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def _last_step(lines: list[tuple[float, str]]) -> str:
    steps = [ln.split()[2] for _, ln in lines if ln.startswith("ota: step ")]
    return steps[-1] if steps else "start"


def _run_until_step(dev: Device, bundle: Path, step: str) -> tuple[list[str], bool]:
    """Start an install and SIGKILL it the moment it announces ``step``. Returns (lines, killed)."""
    proc = _start(dev, bundle)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith(f"ota: step {step} "):
            _kill(proc)
            return lines, True
    proc.wait(30)
    return lines, False


def _run_for(
    dev: Device, bundle: Path, delay: float, after: str = "lock"
) -> tuple[list[tuple[float, str]], bool]:
    """Start an install, SIGKILL it ``delay`` s after it announced step ``after``.

    Returns ((time since ``after``, line) pairs, killed).
    """
    import queue
    import threading

    proc = _start(dev, bundle)
    q: queue.Queue = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                q.put((time.monotonic(), line.rstrip()))
        except ValueError:
            pass
        q.put(None)

    threading.Thread(target=reader, daemon=True).start()
    lines: list[tuple[float, str]] = []
    t_after: float | None = None
    deadline = time.monotonic() + 120
    while True:
        timeout = (t_after + delay - time.monotonic()) if t_after is not None else deadline - time.monotonic()
        if timeout <= 0:
            break
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            break
        if item is None:
            proc.wait(30)
            return lines, False
        ts, line = item
        if t_after is None and line.startswith(f"ota: step {after} "):
            t_after = ts
        lines.append((ts - (t_after or ts), line))
    _kill(proc)
    return lines, True


def _check_boot(dev: Device, where: str) -> str:
    check = dev.boot_check()
    assert check.returncode == 0, f"{where}: boot check failed: {check.stdout}{check.stderr}"
    json.loads((dev.state_dir / "ota.json").read_text())  # the state file is always whole
    layout = Layout(dev.root, dev.state_dir)
    slot = layout.current_slot()
    info = layout.slot_info(slot) if slot else None
    assert info is not None, f"{where}: current -> {slot} is not a complete slot"
    version = dev.running_version()
    assert version in {"1.0.0", "2.0.0"}, f"{where}: the release in slot {slot} does not run ({version})"
    assert version == info["version"], f"{where}: slot {slot} runs {version}, marker says {info['version']}"
    return version


def _back_to_old(dev: Device, options: InstallOptions) -> None:
    layout = Layout(dev.root, dev.state_dir)
    assert lock_holder(layout) is None, "the dead updater's lock must be free"
    update = layout.load_state().get("update")
    if update and update.get("phase") in {"trial", "rolling_back"}:
        rollback(layout, options, "test: back to the old version")
    assert dev.boot_check().returncode == 0
    assert dev.running_version() == "1.0.0"


def _clean_install(dev: Device, bundle: Path, where: str) -> dict[str, float]:
    """An install run to the end; returns its steps' times (s after the lock step)."""
    lines, killed = _run_for(dev, bundle, 120)
    assert not killed and any("step switched" in ln for _, ln in lines), (where, lines)
    assert _check_boot(dev, where) == "2.0.0"
    return {ln.split()[2]: t for t, ln in lines if ln.startswith("ota: step ")}


@pytest.mark.slow
def test_power_loss_at_every_step_and_random_points(tmp_path: Path) -> None:
    # two devices, each killed by its own thread: two installs at a time use both cores
    devices = [
        Device(tmp_path / f"dev{k}", layer=False) for k in range(2)
    ]  # `otaprobe --version` needs nothing else
    bundles, options = [], []
    for k, dev in enumerate(devices):
        provision(dev)
        bundles.append(make_bundle(dev, tmp_path / f"v2-{k}.tar", "2.0.0"))
        options.append(InstallOptions.from_config(load_config(dev.config_path)))

    # a clean run for the timeline (seconds after the lock step), then back to 1.0.0
    at = _clean_install(devices[0], bundles[0], "clean run")
    for k, dev in enumerate(devices):
        if k:
            _clean_install(dev, bundles[k], f"clean run, device {k}")
        _back_to_old(dev, options[k])

    outcomes: Counter[str] = Counter()
    where: Counter[str] = Counter()
    guard = threading.Lock()
    tally = {"kills": 0, "random_kills": 0, "draws": 0}
    inside_steps = ("venv", "pip", "copy", "seal", "switch")

    def boundaries(k: int) -> None:
        dev = devices[k]
        for step in STEPS[k :: len(devices)]:
            step_lines, killed = _run_until_step(dev, bundles[k], step)
            assert killed, f"never reached {step}: {step_lines}"
            version = _check_boot(dev, f"kill at step {step}")
            with guard:
                tally["kills"] += 1
                where[f"boundary:{step}"] += 1
                outcomes[version] += 1
            _back_to_old(dev, options[k])

    # random points: two thirds over the whole install, one third inside copy..switch. The delays
    # come from one clean run, so under load fewer land where they were aimed: keep drawing (bounded)
    # until both quotas hold rather than accept fewer kills inside the install.
    def random_points(k: int) -> None:
        dev, rng = devices[k], random.Random(5 + k)
        while True:
            with guard:
                if (
                    tally["random_kills"] >= RANDOM_POINTS
                    and sum(where[s] for s in inside_steps) >= INSIDE_POINTS
                ):
                    return
                tally["draws"] += 1
                i = tally["draws"]
                assert i < 4 * RANDOM_POINTS, where
            if i % 3 == 2:  # measured from the copy step, so the short copy/seal/switch window is hit
                delay, after = rng.uniform(0.0, at["switched"] - at["copy"]), "copy"
            else:
                delay, after = rng.uniform(0.0, at["switched"]), "lock"
            lines, killed = _run_for(dev, bundles[k], delay, after)
            version = _check_boot(dev, f"random kill {i} at {delay:.3f}s (after {_last_step(lines)})")
            with guard:
                tally["kills"] += killed
                tally["random_kills"] += killed
                where[_last_step(lines) if killed else "finished"] += 1
                outcomes[version] += 1
            _back_to_old(dev, options[k])

    for phase in (boundaries, random_points):
        with ThreadPoolExecutor(len(devices)) as pool:
            for future in [pool.submit(phase, k) for k in range(len(devices))]:
                future.result()  # a failed check in either thread fails the test

    # afterwards a normal update still goes through: no stale lock, no stuck state
    for k, dev in enumerate(devices):
        _clean_install(dev, bundles[k], f"final run, device {k}")

    kills = tally["kills"]
    assert kills >= len(STEPS) + 50
    assert outcomes["1.0.0"] > 0 and outcomes["2.0.0"] > 0
    assert sum(where[s] for s in inside_steps) >= INSIDE_POINTS, where
    assert all(where[f"boundary:{step}"] == 1 for step in STEPS), where
    print(where)
    report = {
        "kills": kills,
        "install_s": round(at["switched"], 3),
        "steps_at_s": at,
        "came_up_on": dict(outcomes),
        "killed_during": dict(sorted(where.items())),
    }
    print("POWERLOSS", json.dumps(report))
    out = os.environ.get("OTA_POWERLOSS_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))


class PowerCut(BaseException):
    """Raised instead of the k-th durable write: nothing after it happens (no except clause sees it)."""


def _cut_before_write(monkeypatch: pytest.MonkeyPatch, k: int) -> list[str]:
    """Make the k-th atomic write (state file, marker or link swap; 1-based) a power cut."""
    import ota.layout as layout_mod

    done: list[str] = []
    real_bytes, real_link = layout_mod.atomic_write_bytes, layout_mod.atomic_symlink

    def gate(what: str) -> None:
        if len(done) + 1 == k:
            raise PowerCut(what)
        done.append(what)

    def write(path, data):  # type: ignore[no-untyped-def]
        gate(f"write {Path(path).name}")
        real_bytes(path, data)

    def link(path, target):  # type: ignore[no-untyped-def]
        gate(f"link {Path(path).name} -> {target}")
        real_link(path, target)

    monkeypatch.setattr(layout_mod, "atomic_write_bytes", write)
    monkeypatch.setattr(layout_mod, "atomic_symlink", link)
    return done


def test_cut_before_every_durable_write_of_install_commit_and_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exhaustive: for install+switch, commit and rollback, a cut before each of their durable
    writes (every state write, marker and link swap), then the real boot check."""
    from device_agent.ota_component import manual_rollback
    from ota.installer import Installer
    from ota.trial import commit

    dev = Device(tmp_path / "dev", layer=False)
    provision(dev)
    bundle = make_bundle(dev, tmp_path / "v2.tar", "2.0.0")
    options = InstallOptions.from_config(load_config(dev.config_path))
    layout = Layout(dev.root, dev.state_dir)
    cuts = {"install": 0, "commit": 0, "rollback": 0}

    def attempt(kind: str, k: int) -> bool:
        """Run ``kind`` with a cut before write k; False when it finished without reaching k."""
        with monkeypatch.context() as m:
            _cut_before_write(m, k)
            try:
                if kind == "install":
                    Installer(layout, options).install(bundle)
                elif kind == "commit":
                    commit(layout, options)
                else:
                    rollback(layout, options, "test rollback")
            except PowerCut:
                cuts[kind] += 1
                return True
        return False

    for kind in ("install", "commit", "rollback"):
        k = 1
        while True:
            # the starting point: 1.0.0 committed, or 2.0.0 switched and in trial
            if dev.running_version() == "2.0.0" and not layout.load_state().get("update"):
                manual_rollback(layout, options, "test: back to 1.0.0")  # after a completed commit
            _back_to_old(dev, options)
            if kind != "install":
                Installer(layout, options).install(bundle)
                assert dev.boot_check().returncode == 0
            cut = attempt(kind, k)
            state_before_boot = layout.load_state()
            version = _check_boot(dev, f"{kind}: cut before durable write {k}")
            if (state_before_boot.get("update") or {}).get("phase") == "rolling_back":
                assert version == "1.0.0"  # a recorded rollback is always finished
            if kind == "commit" and cut and (state_before_boot.get("update") or {}).get("phase") is None:
                assert version == "2.0.0"  # once committed it stays
            if not cut:
                break
            k += 1
    assert cuts["install"] >= 4 and cuts["commit"] >= 1 and cuts["rollback"] >= 3, cuts
    print("DURABLE-WRITE CUTS", cuts)
