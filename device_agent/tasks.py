"""Small asyncio helpers shared by components.

``cancel_and_wait`` is defined in ``hal.tasks`` (the HAL imports nothing from the agent, so the
one definition lives on the lower layer) and re-exported here for the agent's components.
"""

from __future__ import annotations

from hal.tasks import cancel_and_wait

__all__ = ["cancel_and_wait"]
