"""Stub until the checker lands: the recorded history's shapes."""
from dataclasses import dataclass, field


@dataclass
class Attempt:
    invoke: float
    complete: float
    status: int | None
    body: dict | None


@dataclass
class Operation:
    kind: str
    item_id: int
    user_id: str
    key: str | None
    quantity: int = 1
    purchase_id: int | None = None
    attempts: list = field(default_factory=list)
