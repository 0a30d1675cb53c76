"""One checks library for ``device-agent doctor`` and ``diag.selftest``.

The doctor (``provisioning.doctor``) runs the *offline* subset on a device being installed:
clock, disk, microphone, camera (plus identity, broker, noise-suppression model and speaker, which
need provisioning or a person). The self-test (``device_agent.diag.selftest``) runs the *runtime*
subset against the running agent: microphone, camera, disk, temperature, throttling, clock (plus
loopback, encoder, noise suppression and broker, which read the running components).

Both build their lines from the same :class:`Check` and the same functions here, with the same
thresholds (``thresholds``); each keeps its own output (doctor: a checklist with fixes; self-test:
a command result with values).
"""

from device_agent.checks.devices import check_camera_frame, check_mic_level
from device_agent.checks.result import FAIL, PASS, SKIP, WARN, Check
from device_agent.checks.system import (
    check_clock,
    check_disk,
    check_temperature,
    check_throttling,
    ntp_synchronized,
    read_throttled,
    throttle_flags,
)

__all__ = [
    "FAIL",
    "PASS",
    "SKIP",
    "WARN",
    "Check",
    "check_camera_frame",
    "check_clock",
    "check_disk",
    "check_mic_level",
    "check_temperature",
    "check_throttling",
    "ntp_synchronized",
    "read_throttled",
    "throttle_flags",
]
