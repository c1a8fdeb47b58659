"""Accounts: the broker accounts the daemon trades, each addressed by name.

``TRADING_ACCOUNTS`` lists them with a size multiplier each
(``main=1.0,eval2=0.5``); for ProjectX a name is the account's name or id on
the gateway, for paper any name (each has its own book in the journal). Unset,
there is one account: ``paper``, or PROJECT_X_ACCOUNT (``default`` if empty).

An alert that names an account trades that one; an alert that names none fans
out to every configured account, one task each, so a strategy posted once
trades all of them with their own sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .broker import Broker
from .paper_broker import DEFAULT_ACCOUNT, PaperBroker

if TYPE_CHECKING:
    from .config import Settings
    from .journal import Journal


@dataclass(frozen=True)
class AccountSpec:
    name: str
    multiplier: float = 1.0


def account_specs(settings: Settings) -> list[AccountSpec]:
    """The configured accounts, the first being the default."""
    if settings.accounts:
        return [AccountSpec(name, mult) for name, mult in settings.accounts]
    if settings.broker == "projectx":
        return [AccountSpec(settings.project_x_account or "default")]
    return [AccountSpec(DEFAULT_ACCOUNT)]


def make_brokers(settings: Settings, journal: Journal) -> dict[str, Broker]:
    """One broker per configured account, by account name."""
    specs = account_specs(settings)
    brokers: dict[str, Broker] = {}
    if settings.broker == "projectx":
        from .projectx_broker import ProjectXBroker

        client = None
        for spec in specs:
            # Unlisted, the account is PROJECT_X_ACCOUNT (or the only one).
            wanted = spec.name if settings.accounts else None
            broker = ProjectXBroker.from_settings(
                settings, account=wanted, client=client
            )
            client = broker.client
            brokers[spec.name] = broker
        return brokers

    for spec in specs:
        brokers[spec.name] = PaperBroker(
            settings.paper_prices,
            default_price=settings.paper_default_price,
            balance=settings.paper_balance,
            fill_delay=settings.paper_fill_delay,
            journal=journal,
            account=spec.name,
        )
    return brokers


class Accounts:
    """Each account's broker and multiplier, and which accounts an alert means."""

    def __init__(self, brokers: Mapping[str, Broker], specs: list[AccountSpec]):
        if not brokers:
            raise ValueError("at least one account is needed")
        self.brokers = dict(brokers)
        multipliers = {spec.name: spec.multiplier for spec in specs}
        self.multipliers = {name: multipliers.get(name, 1.0) for name in brokers}

    @property
    def names(self) -> list[str]:
        return list(self.brokers)

    @property
    def default(self) -> str:
        return self.names[0]

    def broker(self, name: str | None) -> Broker:
        """The broker of ``name``; journals from before accounts name none."""
        return self.brokers[name or self.default]

    def resolve(self, requested: str | None) -> list[str]:
        """The accounts an alert goes to; LookupError for one not configured."""
        if requested is None:
            return self.names
        for name in self.names:
            if name.casefold() == requested.casefold():
                return [name]
        raise LookupError(
            f"account must be one of {', '.join(self.names)}, got {requested!r}"
        )
