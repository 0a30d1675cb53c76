"""One convention for the property-based fuzz tests (Hypothesis) and their long seeded run.

A fuzz test names its target and its default example count; the default run (``make test``)
stays bounded, and ``python -m benchmarks.fuzz --minutes N`` scales every count up with
``DEVICE_AGENT_FUZZ_SCALE`` and a fixed ``DEVICE_AGENT_FUZZ_SEED``::

    from tests.support.fuzzing import fuzz_settings, fuzz_example

    @fuzz_settings(examples=150)
    @given(body=st.binary())
    def test_whep_offer_never_500(agent, body):
        with fuzz_example("whep") as example:
            status = post(agent, body)
            assert status < 500
            if not agent_still_serves():
                example.lost()          # something was lost (a viewer, a telemetry gap, a slot)

Every ``fuzz_example`` counts one try for its target; an exception escaping it counts one crash
(and is re-raised, so the test fails); ``lost()`` counts one loss (and the test should assert
too). With ``DEVICE_AGENT_FUZZ_REPORT`` set, the counts are appended to that file as JSON lines
at the end of each example, which the long run adds up into "N tried, 0 crashes, 0 lost".
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

F = TypeVar("F", bound=Callable[..., Any])

SCALE_ENV = "DEVICE_AGENT_FUZZ_SCALE"
SEED_ENV = "DEVICE_AGENT_FUZZ_SEED"
REPORT_ENV = "DEVICE_AGENT_FUZZ_REPORT"


def fuzz_scale() -> float:
    """How many times the default example counts to run (1 in the default suite)."""
    try:
        return max(0.01, float(os.environ.get(SCALE_ENV, "1")))
    except ValueError:
        return 1.0


def fuzz_settings(examples: int) -> Callable[[F], F]:
    """Hypothesis settings for a fuzz test: ``examples`` scaled, no deadline, no example database.

    The default run is derandomized (the same examples every run, so CI is reproducible); the long
    run draws from ``DEVICE_AGENT_FUZZ_SEED`` instead.
    """
    seeded = SEED_ENV in os.environ
    chosen = settings(
        max_examples=max(1, int(examples * fuzz_scale())),
        deadline=None,
        database=None,
        derandomize=not seeded,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )

    def apply(fn: F) -> F:
        fn = chosen(fn)
        if seeded:
            from hypothesis import seed

            fn = seed(int(os.environ[SEED_ENV]))(fn)
        return fn

    return apply


class FuzzExample:
    """The outcome of one fuzz example; ``lost()`` marks that something was lost."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.losses = 0

    def lost(self, count: int = 1) -> None:
        self.losses += count


@contextlib.contextmanager
def fuzz_example(target: str) -> Iterator[FuzzExample]:
    """Count one try against ``target``; an escaping exception counts as a crash and re-raises."""
    example = FuzzExample(target)
    crashed = 0
    try:
        yield example
    except BaseException:
        crashed = 1
        raise
    finally:
        _report(target, tried=1, crashes=crashed, lost=example.losses)


def _report(target: str, **counts: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"target": target, **counts}) + "\n")
