"""The store contract, on SQLite and on PostgreSQL: migrations, claims, locks, transactions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.store import (
    CORE_MIGRATIONS,
    Migration,
    PostgresStore,
    ShadowStore,
    StoreError,
    redact_url,
)

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def store(backend):
    s = backend.store()
    s.migrate("core", CORE_MIGRATIONS)
    yield s
    s.close()


def test_migrations_apply_once_in_order(store):
    steps = [
        Migration(1, ("CREATE TABLE things (id TEXT PRIMARY KEY)",)),
        Migration(2, ("ALTER TABLE things ADD COLUMN n INTEGER",)),
    ]
    assert store.pending("things", steps) == steps
    assert store.migrate("things", steps) == [1, 2]
    assert store.migrate("things", steps) == []
    assert store.applied("things") == {1, 2} and "things" in store.tables()
    with pytest.raises(StoreError, match="strictly increasing"):
        store.migrate("other", [Migration(2, ()), Migration(1, ())])


def test_failed_migration_changes_nothing_and_names_its_owner(store):
    bad = [Migration(1, ("CREATE TABLE half (id TEXT)", "CREATE TABLE broken (id NOSUCHTYPE("))]
    with pytest.raises(StoreError, match="migration 1 of 'half' failed"):
        store.migrate("half", bad)
    assert store.applied("half") == set() and "half" not in store.tables()


def test_claims(store):
    assert store.claim("c1", "ice", "", lease=30, now=1000).status == "new"
    assert store.claim("c1", "ice", "", lease=30, now=1001).status == "busy"
    assert store.answer_of("c1", "ice", "") is None
    store.finish("c1", "ice", "", '{"action":{"name":"hangup"}}', "{}", "hangup")
    assert store.answer_of("c1", "ice", "") == '{"action":{"name":"hangup"}}'
    claim = store.claim("c1", "ice", "", lease=30, now=1002)
    assert (claim.status, claim.answer) == ("done", '{"action":{"name":"hangup"}}')
    assert store.claim("c1", "ace", "", lease=30).status == "new"  # another event of the call
    assert [r["event"] for r in store.traces("c1")] == ["ice", "ace"]


def test_expired_lease_is_taken_over_and_release_allows_retry(store):
    assert store.claim("c2", "dice", "", lease=30, now=1000).status == "new"
    assert store.claim("c2", "dice", "", lease=30, now=1029).status == "busy"
    assert store.claim("c2", "dice", "", lease=30, now=1031).status == "new"  # the worker died
    store.release("c2", "dice", "")
    assert store.claim("c2", "dice", "", lease=30).status == "new"


def test_concurrent_claims_have_one_winner(store):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.claim("c3", "ice", "", lease=30).status, range(16)))
    assert results.count("new") == 1 and results.count("busy") == 15


def test_lock_serialises_read_modify_write(store):
    store.migrate(
        "counter",
        [
            Migration(
                1,
                (
                    "CREATE TABLE counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL)",
                    "INSERT INTO counter (k, n) VALUES ('x', 0)",
                ),
            )
        ],
    )
    barrier = threading.Barrier(8)

    def bump(_):
        barrier.wait()
        for _ in range(25):
            with store.transaction() as tx:
                tx.lock("counter:x")
                (n,) = tx.one("SELECT n FROM counter WHERE k = ?", ("x",))
                tx.execute("UPDATE counter SET n = ? WHERE k = ?", (n + 1, "x"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(bump, range(8)))
    assert store.query("SELECT n FROM counter") == [(200,)]


def test_transaction_rolls_back_on_error(store):
    store.migrate("rb", [Migration(1, ("CREATE TABLE rb (id TEXT PRIMARY KEY)",))])
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.execute("INSERT INTO rb (id) VALUES (?)", ("a",))
            raise RuntimeError("boom")
    assert store.query("SELECT COUNT(*) FROM rb") == [(0,)]
    with store.transaction() as tx:
        tx.execute("INSERT INTO rb (id) VALUES (?)", ("100%",))
    assert store.query("SELECT id FROM rb WHERE id LIKE '%\\%' ESCAPE '\\'") == [("100%",)]
    store.ping()


def test_the_shadow_store_reads_for_real_and_never_commits(store):
    """What a shadow plugin (``plugins.shadow``) gets: the real store's reads, and
    transactions that always roll back."""
    store.migrate("t", [Migration(1, ("CREATE TABLE t_rows (n INTEGER NOT NULL)",))])
    store.write("INSERT INTO t_rows (n) VALUES (1)")
    shadow = ShadowStore(store)
    assert (shadow.backend, shadow.instance) == (store.backend, store.instance)
    with shadow.transaction() as tx:
        tx.execute("INSERT INTO t_rows (n) VALUES (2)")
        assert tx.all("SELECT n FROM t_rows ORDER BY n") == [(1,), (2,)]  # its own view
    assert shadow.query("SELECT n FROM t_rows") == [(1,)]
    with pytest.raises(ValueError, match="boom"), shadow.transaction() as tx:
        tx.execute("INSERT INTO t_rows (n) VALUES (3)")
        raise ValueError("boom")
    assert shadow.write("UPDATE t_rows SET n = n + 10") == 1  # the rows it would change
    assert shadow.write("DELETE FROM t_rows") == 1
    assert shadow.inspect("SELECT n FROM t_rows") == [(1,)]
    assert shadow.claim("call", "ice", "", lease=5).status == "new"  # built on write()
    assert store.query("SELECT COUNT(*) FROM callbacks") == [(0,)]
    with shadow.deferred_flush() as pending:
        shadow.write("INSERT INTO t_rows (n) VALUES (4)")
    assert pending.seq == 0
    shadow.flush(pending.seq)
    shadow.sync()
    shadow.close()  # the real store stays open
    assert store.query("SELECT n FROM t_rows") == [(1,)]
    assert "t_rows" in shadow.tables()


def test_postgres_connection_errors_never_show_the_password():
    with pytest.raises(StoreError) as err:
        PostgresStore("postgresql://app:s3cret@127.0.0.1:1/nowhere", timeout=1)
    assert "s3cret" not in str(err.value) and "postgresql://app:***@127.0.0.1:1/nowhere" in str(
        err.value
    )
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("postgresql://app@db/calls", "postgresql://app@db/calls"),
        ("postgresql://app:s3cret@db:5432/calls", "postgresql://app:***@db:5432/calls"),
        ("postgresql://app:p@ss:w@rd@db/x", "postgresql://app:***@db/x"),
        ("postgresql://app:s3/cr?et@db/x", "postgresql://app:***@db/x"),
        (
            "postgresql://app@db/calls?password=s3cret&sslmode=require",
            "postgresql://app@db/calls?password=***&sslmode=require",
        ),
        (
            "postgresql://db/x?sslpassword=s3cret&PASSWORD=s3cret",
            "postgresql://db/x?sslpassword=***&PASSWORD=***",
        ),
        ("postgresql://db/x?password=s3cret&sslcert=/a@b", "postgresql://***@b"),
        ("host=db user=app password=s3cret dbname=x", "host=db user=app password=*** dbname=x"),
        ("host=db password='s3 cret' user=x", "host=db password=*** user=x"),
    ],
)
def test_redact_url_removes_every_password(url, shown):
    assert redact_url(url) == shown
    assert "s3" not in redact_url(url) and "cret" not in redact_url(url)


def test_redact_url_can_hide_the_whole_userinfo_and_secret_parameters():
    assert redact_url("https://tok3n@hooks.example/x?token=abc&id=3", keep_user=False) == (
        "https://***@hooks.example/x?token=***&id=3"
    )
    assert redact_url("https://u:p@hooks.example/x?api_key=k", keep_user=False) == (
        "https://***@hooks.example/x?api_key=***"
    )


def test_a_failed_commit_leaves_no_transaction_open_on_sqlite(tmp_path):
    """A COMMIT that fails (here a deferred foreign key; on a full disk or an I/O error
    SQLite may likewise keep the transaction open) is rolled back, so the shared write
    connection does not carry it into the next writer's work: later writes still commit,
    and another connection sees them."""
    import sqlite3

    from core.store import SqliteStore

    path = tmp_path / "commit.db"
    store = SqliteStore(str(path))
    try:
        store.write("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        store.write(
            "CREATE TABLE child (id INTEGER, parent INTEGER REFERENCES parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        with pytest.raises(sqlite3.IntegrityError):
            with store.transaction() as tx:
                tx.execute("INSERT INTO child VALUES (1, 99)")  # fails only at COMMIT
        assert store.write("INSERT INTO parent VALUES (7)") == 1
        with store.transaction() as tx:
            tx.execute("INSERT INTO child VALUES (2, 7)")
        other = sqlite3.connect(path)
        assert other.execute("SELECT id FROM parent").fetchall() == [(7,)]
        assert other.execute("SELECT id, parent FROM child").fetchall() == [(2, 7)]
        other.close()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cretPW@[::1/db", "not a valid postgresql url"),
        ("postgresql://app:s3c@retPW@127.0.0.1:1/test", "must be percent-encoded"),
        ("postgresql://app:s3cretPW@127.0.0.1:1/test", "connection refused"),
    ],
)
def test_a_bad_postgresql_url_is_named_and_its_password_never_shown(url, expected, caplog):
    pytest.importorskip("psycopg")
    with caplog.at_level("DEBUG"), pytest.raises(StoreError) as err:
        PostgresStore(url, pool_size=1, timeout=0.5)
    assert expected in str(err.value).lower()
    shown = str(err.value) + caplog.text
    assert "s3c" not in shown and "retPW" not in shown
