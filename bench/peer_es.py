"""The peer: the same bank account on the `eventsourcing` library (pip extra `bench`)."""

from __future__ import annotations

import uuid

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str, currency: str) -> None:
        self.owner = owner
        self.currency = currency
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int, description: str) -> None:
        self.balance += amount


class Bank(Application[uuid.UUID]):
    def open(self, owner: str) -> uuid.UUID:
        account = Account(owner, "EUR")
        self.save(account)
        return account.id

    def deposit(self, account_id: uuid.UUID, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        account: Account = self.repository.get(account_id)
        account.deposit(amount, "bench")
        self.save(account)
        return int(account.balance)
