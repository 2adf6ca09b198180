"""credit: prepaid control that cannot overrun or double-charge.

Balances are integers in minor units (cents); rates and prices are ``Decimal``; a
charge is rounded up to the next minor unit. At ICE the call's account is looked up
(by ``account_from``), the price per minute is found (longest destination prefix of
``rates``, or Sinch's ``userRate`` plus ``markup_percent``), and the call is capped at
what the available balance buys (balance minus other calls' open reservations),
billed in ``increments`` (e.g. ``60/60``, ``1/1``) with a ``minimum_charge``. That
amount is reserved for the call in the same transaction. Below ``minimum_seconds`` the
call is denied.

At DiCE the call is settled exactly once (duration at the reserved rate, or Sinch's
``debit`` with ``settle_with = "debit"``): a ledger entry is written, the balance
debited (never below zero), the reservation closed. A duplicate DiCE changes nothing;
a DiCE for a call never reserved is recorded in ``credit_settled`` as ``unreserved``.
A sweeper expires reservations whose DiCE never came, ``grace`` seconds after their
``maxDuration``.

One job per module: ``settings`` (the keys, parsed once), ``rating`` (who pays, the
rate, what a call costs), ``ledger`` (accounts, reservations, settlements in the
store), ``sweeper`` (expiry of reservations), ``cli`` (the ``credit`` commands) and
``plugin`` (the hooks, wiring them together).
"""

from plugins.credit.ledger import MIGRATIONS
from plugins.credit.plugin import Credit
from plugins.credit.rating import Tariff, fmt, parse_amount
from plugins.credit.settings import KEYS, CreditSettings

__all__ = ["KEYS", "MIGRATIONS", "Credit", "CreditSettings", "Tariff", "fmt", "parse_amount"]
