"""Everything one local Stripe account holds: its clock, its store, its settings, and the
background work on them (the v2 stream's validator, the event destination's delivery).

Kept in ``app.extensions["local_stripe"]`` so tests can reach it without HTTP.
"""

from __future__ import annotations

from typing import Any

from local_stripe.clock import Clock
from local_stripe.faults import Faults
from local_stripe.state import Store
from local_stripe.validator import Validator
from local_stripe.webhooks import Delivery


class LocalStripe:
    """``settings`` are the defaults of ``faults.py``'s settings (what a reset returns to)."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.store = Store(self.clock)
        self.faults = Faults(**settings)
        self.delivery = Delivery()
        self.validator = Validator(self.store, self.faults, self.emit)
        # A moved clock may make events due for judging and report windows ended.
        self.clock.on_advance(self.validator.wake)
        self._destination_since = self.clock.now()

    def start(self) -> None:
        self.validator.start()
        self.delivery.start()

    def stop(self) -> None:
        self.validator.stop()
        self.delivery.stop()

    def reset(self) -> None:
        """Forget everything stored and every delivery not yet made; settings to defaults;
        the clock back to real time."""
        self.store.reset()
        self.delivery.reset()
        self.faults.reset()
        self.clock.reset()
        self._destination_since = self.clock.now()
        self.validator.wake()

    def update_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """``Faults.update``, and the validator told (the delay may have changed)."""
        before = self.faults.current.webhook_url
        settings = self.faults.update(changes)
        if settings["webhook_url"] != before:
            self._destination_since = self.clock.now()
        self.validator.wake()
        return settings

    def destination(self) -> tuple[str | None, float]:
        """The event destination's URL (None: there is none) and when it was set."""
        return self.faults.current.webhook_url, self._destination_since

    def advance_clock(self, seconds: float) -> float:
        """Move the clock forward, then do at once what became due (judge events, emit
        error reports) before answering; the new now."""
        now = self.clock.advance(seconds)
        self.validator.run_due()
        return now

    def emit(self, event: dict[str, Any]) -> None:
        """Publish a v2 event: listed from now on, and sent to the destination if one is set."""
        self.store.add_core_event(event)
        settings = self.faults.current
        if settings.webhook_url:
            self.delivery.send(event, settings.webhook_url, settings.webhook_secret)
