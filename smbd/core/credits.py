"""The message-id window and credit granting, MS-SMB2 3.3.1.1, 3.3.1.2, 3.3.5.2.3, 3.3.5.2.5."""
from __future__ import annotations

from smbd.status import ProtocolViolation

CREDIT_UNIT = 65536  # one credit pays for 64 KiB of payload (3.1.5.2)


def required_charge(payload_size: int) -> int:
    """CreditCharge a request moving ``payload_size`` bytes must carry (3.1.5.2)."""
    return max(1, (payload_size - 1) // CREDIT_UNIT + 1)


class CreditWindow:
    """The CommandSequenceWindow: the message ids the client may use next.

    Ids in [low, high) were granted; ``used`` holds those consumed out of order. A
    request must use ids inside the window that were not used before, otherwise the
    connection is dropped (3.3.5.2.3, as Windows and Samba do).
    """

    def __init__(self, max_credits: int = 8192):
        self.max_credits = max_credits
        self.low = 0
        self.high = 1  # message id 0 is granted at connection start
        self.used: set[int] = set()

    def state(self) -> dict:
        """The window as JSON, for a channel that moves to another worker (smbd.server.channel_move)."""
        return {"max": self.max_credits, "low": self.low, "high": self.high, "used": sorted(self.used)}

    @classmethod
    def from_state(cls, state: dict) -> "CreditWindow":
        window = cls(int(state["max"]))
        window.low, window.high = int(state["low"]), int(state["high"])
        window.used = {int(m) for m in state["used"]}
        if not window.low <= window.high or any(not window.low < m < window.high for m in window.used):
            raise ValueError("inconsistent credit window")
        return window

    @property
    def outstanding(self) -> int:
        """Credits the client holds: granted ids not yet consumed."""
        return self.high - self.low - len(self.used)

    def consume(self, message_id: int, charge: int) -> None:
        charge = max(charge, 1)
        last = message_id + charge
        if message_id < self.low or last > self.high:
            raise ProtocolViolation(f"message id {message_id}+{charge} outside window [{self.low},{self.high})")
        for mid in range(message_id, last):
            if mid in self.used:
                raise ProtocolViolation(f"message id {mid} reused")
        self.used.update(range(message_id, last))
        while self.low in self.used:
            self.used.discard(self.low)
            self.low += 1

    def grant(self, requested: int, charge: int) -> int:
        """Credits to grant in a response (3.3.1.2).

        The client gets what it asks for (at least one per request so it never starves),
        bounded so it never holds more than max_credits, and the window never spans more
        than twice that, so skipped ids cannot make the bookkeeping grow without bound.
        """
        want = max(requested, 1)
        room = min(self.max_credits - self.outstanding,
                   2 * self.max_credits - (self.high - self.low))
        granted = max(0, min(want, room))
        if granted == 0 and self.outstanding == 0 and self.high - self.low < 2 * self.max_credits:
            granted = 1
        self.high += granted
        return granted
