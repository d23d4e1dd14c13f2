"""The database schema: the numbered migrations of queries/migrations/, each applied once, in order.

A migration is NNNN_name.sql, one statement. `upgrade()` applies the ones a database lacks, each in
a transaction of its own that also records it in schema_migrations, all under an advisory lock so
that two processes upgrading at once take turns. A migration is never edited once released: a
change to the schema is a new file with the next number."""
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

import db

MIGRATIONS = db.QUERIES / "migrations"
MIGRATION_FILE = re.compile(r"(\d{4})_(\w+)\.sql")
UPGRADE_COMMAND = "flask --app app db upgrade"
CHECK_CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def label(self):
        return f"{self.version:04d}_{self.name}"

    def sql(self):
        return self.path.read_text()


def migrations(folder=MIGRATIONS):
    """Every migration of the code, in order of version."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = MIGRATION_FILE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations in {folder} share a version")
    return found


def applied_versions(conn):
    """The versions applied to the database; none when it has no bookkeeping table yet."""
    with conn.transaction():
        if not conn.execute(db.query("schema_migrations_exists")).fetchone()["exists"]:
            return set()
        rows = conn.execute(db.query("list_applied_migrations")).fetchall()
    return {row["version"] for row in rows}


def pending(conn, until=None):
    """The code's migrations that the database lacks, in order; only those up to version `until`
    when given."""
    done = applied_versions(conn)
    return [migration for migration in migrations()
            if migration.version not in done and (until is None or migration.version <= until)]


@contextmanager
def migration_lock(conn):
    """Hold the migration lock for the block; another upgrade or reset waits for it."""
    with conn.transaction():
        conn.execute(db.query("lock_migrations"))
    try:
        yield
    finally:
        if not conn.broken:  # a lost session has released its lock already
            with conn.transaction():
                conn.execute(db.query("unlock_migrations"))


def apply_pending(conn, progress=None, until=None):
    """Apply the missing migrations (up to version `until`), each in its own transaction with its
    record; the caller holds the migration lock. Returns the ones applied. `progress(migration)`
    is called before each."""
    with conn.transaction():
        conn.execute(db.query("create_schema_migrations"))
    applied = []
    for migration in pending(conn, until):
        if progress:
            progress(migration)
        with conn.transaction():
            conn.execute(migration.sql())
            conn.execute(db.query("record_migration"),
                         {"version": migration.version, "name": migration.name})
        applied.append(migration)
    return applied


def upgrade(conn, progress=None, until=None):
    """Bring the database's schema up to the code's (or to version `until`: the tests make a
    database of an earlier release); returns the migrations applied."""
    with migration_lock(conn):
        return apply_pending(conn, progress, until)


def outdated_message(missing):
    """The one line that says the schema is behind the code, and what to run."""
    total = len(migrations())
    return (f"The database schema is older than the code: {total - len(missing)} of {total} "
            f"migrations applied, {missing[0].label} is next. Run `{UPGRADE_COMMAND}`.")


def check(database_url):
    """The line to stop the service with when the database's schema is older than the code;
    None when it is up to date. Raises psycopg.Error when the database cannot be asked."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row,
                         connect_timeout=CHECK_CONNECT_TIMEOUT_SECONDS) as conn:
        missing = pending(conn)
    return outdated_message(missing) if missing else None
