"""The console's own tables, applied when the console starts on a store: one list of
migrations of its own (owner ``console``, apart from the core's versions, so that the
console's tables never take a version the core needs).

1. ``console_audit``: the audit log (``core.console.audit``);
2. ``console_sessions``: the sessions (``core.console.sessions``).
"""

from __future__ import annotations

from core.console import audit, sessions
from core.store import Store

OWNER = "console"
MIGRATIONS = (audit.MIGRATION, sessions.MIGRATION)


def migrate(store: Store) -> None:
    store.migrate(OWNER, MIGRATIONS)
