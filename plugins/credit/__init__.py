"""credit: prepaid control that cannot overrun or double-charge.

At ICE a call is capped at what its account's available balance buys, and that amount
is reserved for it; at DiCE the call is settled exactly once, never past what it was
granted; a sweeper releases the reservations whose DiCE never came.

One job per module: ``settings`` (the keys, parsed once), ``rating`` (who pays, the
rate, what a call costs: amounts in minor units), ``ledger`` (accounts, reservations
and settlements in the store, and their guarantees), ``sweeper`` (expiry of
reservations), ``cli`` (the ``credit`` commands) and ``plugin`` (the hooks, wiring
them together).
"""

from plugins.credit.ledger import MIGRATIONS
from plugins.credit.plugin import Credit
from plugins.credit.rating import Tariff, fmt, parse_amount
from plugins.credit.settings import KEYS, CreditSettings

__all__ = ["KEYS", "MIGRATIONS", "Credit", "CreditSettings", "Tariff", "fmt", "parse_amount"]
