"""crm's tables: the call records, the outbox of deliveries, the dead letters."""

from __future__ import annotations

from core import Migration

MIGRATIONS = [
    Migration(
        1,
        (
            """CREATE TABLE crm_calls (
                callid TEXT PRIMARY KEY, caller TEXT, destination TEXT, started_at TEXT, answered_at TEXT,
                ended_at TEXT, duration INTEGER, result TEXT, reason TEXT, debit_amount TEXT, debit_currency TEXT,
                ice_answer TEXT, ice_trace TEXT, recorded_at DOUBLE PRECISION NOT NULL,
                delivered_at DOUBLE PRECISION)""",
            "CREATE INDEX crm_calls_recorded ON crm_calls (recorded_at)",
            """CREATE TABLE crm_outbox (
                callid TEXT PRIMARY KEY, payload TEXT NOT NULL, attempts INTEGER NOT NULL,
                next_attempt_at DOUBLE PRECISION NOT NULL, last_error TEXT, created_at DOUBLE PRECISION NOT NULL)""",
            "CREATE INDEX crm_outbox_due ON crm_outbox (next_attempt_at)",
            """CREATE TABLE crm_dead (
                callid TEXT PRIMARY KEY, payload TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
                failed_at DOUBLE PRECISION NOT NULL)""",
        ),
        "call records, outbox, dead letters",
    ),
    Migration(
        2,
        ("ALTER TABLE crm_outbox ADD COLUMN claim TEXT",),
        "outbox records are claimed one at a time, with a token",
    ),
    Migration(
        3,
        ("CREATE INDEX crm_dead_failed ON crm_dead (failed_at)",),
        "dead letters newest first (the console's CRM outbox page)",
    ),
]
