"""crm: records every finished call and delivers it to a CRM without losing one.

On DiCE the call record is committed before the DiCE is answered; with
``webhook_url`` set it also goes, in the same transaction, into a durable outbox that a
background worker delivers: signed, retried with backoff, each attempt claimed so that
servers sharing the store do not POST a record twice, and moved to the dead letters
after ``max_attempts``. The DiCE answer never waits for the CRM.

One job per module: ``settings`` (the keys), ``schema`` (the tables), ``record`` (the
call record and its payload), ``outbox`` (delivery: claims, retries, dead letters, and
their guarantees), ``webhook`` (one signed POST), ``cli`` (the ``crm`` commands) and
``plugin`` (the hooks, wiring them together).
"""

from plugins.crm.outbox import Outbox
from plugins.crm.plugin import Crm
from plugins.crm.schema import MIGRATIONS
from plugins.crm.settings import KEYS
from plugins.crm.webhook import sign

__all__ = ["KEYS", "MIGRATIONS", "Crm", "Outbox", "sign"]
