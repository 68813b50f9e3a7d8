"""The hub's database: Debian's PostgreSQL, one role and one database for the hub.

Debian's package makes the cluster (`/etc/postgresql/<version>/main`); without systemd here,
`pg_ctlcluster` starts it and its pid file says where it runs. The hub logs in over TCP on the
loopback with a password that only the hub's side reads (`PASSWORD_FILE`); Debian's
`pg_hba.conf` asks for it (scram-sha-256), so other local users get nothing by connecting.
"""

from __future__ import annotations

import signal
from pathlib import Path

from . import services
from .system import ClusterError, sh, wait_for

ROLE = DATABASE = "jupyterhub"
PORT = 5432


def version() -> str:
    """The major version of Debian's PostgreSQL cluster "main" (15 on Debian 12, 17 on 13)."""
    found = sorted((p for p in Path("/etc/postgresql").glob("*/main/postgresql.conf")
                    if p.parent.parent.name.isdigit()), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise ClusterError("PostgreSQL is installed but has no cluster \"main\" "
                           "(/etc/postgresql/<version>/main): run pg_createcluster <version> main.")
    return found[-1].parent.parent.name


def service() -> services.Service:
    try:
        v = version()
    except ClusterError:
        v = "none"  # not installed (yet): known as not running
    return services.Service("postgresql", Path(f"/run/postgresql/{v}-main.pid"),
                            "the hub's database (PostgreSQL)", stop_signal=signal.SIGINT)


def url(password: str, host: str = "127.0.0.1") -> str:
    """SQLAlchemy's URL for the hub (psycopg 3)."""
    return f"postgresql+psycopg://{ROLE}:{password}@{host}:{PORT}/{DATABASE}"


def _answers() -> bool:
    return sh("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(PORT), check=False,
              timeout=10).returncode == 0


def start() -> None:
    db = service()
    if db.running():
        return
    if _answers():
        raise ClusterError(f"A PostgreSQL server not started by aifactory answers on port {PORT}; "
                           "stop it first.")
    Path("/run/postgresql").mkdir(parents=True, exist_ok=True)
    sh("chown", "postgres:postgres", "/run/postgresql")
    sh("pg_ctlcluster", version(), "main", "start", timeout=120)
    wait_for(_answers, "PostgreSQL", timeout=60)


def psql(sql: str, **variables: str) -> str:
    """SQL as the database's superuser. Values (letters and digits only) go in as psql
    variables (:'name'), never formatted into the SQL, and on its input, not its command
    line, which every local user can read."""
    for name, value in variables.items():
        if not value.isalnum():
            raise ClusterError(f"psql variable {name}: letters and digits only")
    sets = "".join(f"\\set {name} {value}\n" for name, value in variables.items())
    return sh("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-t", "-A",
              "-v", "ON_ERROR_STOP=1", input=sets + sql).stdout.strip()


def ensure_role_and_database(password: str) -> None:
    """The hub's role (its password kept in step with the file) and its database."""
    if not password.isalnum():
        raise ClusterError("The hub's database password must be letters and digits only.")
    if psql("SELECT 1 FROM pg_roles WHERE rolname = :'role';", role=ROLE) != "1":
        psql("CREATE ROLE jupyterhub LOGIN;")
    psql("ALTER ROLE jupyterhub WITH LOGIN PASSWORD :'pw';", pw=password)
    if psql("SELECT 1 FROM pg_database WHERE datname = :'db';", db=DATABASE) != "1":
        psql("CREATE DATABASE jupyterhub OWNER jupyterhub;")
    # Only the hub's role may connect to its database (PUBLIC may, by default).
    psql("REVOKE ALL ON DATABASE jupyterhub FROM PUBLIC;")


def move_from_sqlite(sqlite_file: Path, db_url: str, log=print) -> bool:
    """An install from before PostgreSQL kept the hub's state in SQLite: copy every table
    into the new, empty database (running sessions included, so the hub finds their jobs),
    then set the SQLite file aside. True if it moved."""
    if not sqlite_file.exists():
        return False
    import sqlalchemy as sa
    from jupyterhub import orm
    source = sa.create_engine(f"sqlite:///{sqlite_file}")
    target = sa.create_engine(db_url)
    if sa.inspect(target).has_table("users"):
        raise ClusterError(f"The hub's PostgreSQL database has tables already and {sqlite_file} "
                           "is still there: move one of them aside.")
    orm.Base.metadata.create_all(target)
    tables = orm.Base.metadata.sorted_tables
    with source.connect() as read, target.begin() as write:
        for table in tables:
            rows = [dict(r._mapping) for r in read.execute(sa.select(table))]
            if rows:
                write.execute(table.insert(), rows)
        # The schema's revision, so upgrade-db knows where it stands.
        revision = read.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        write.execute(sa.text("CREATE TABLE IF NOT EXISTS alembic_version "
                              "(version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        write.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": revision})
        # New rows continue after the copied ids.
        for table in tables:
            if "id" in table.c and isinstance(table.c.id.type, sa.Integer):
                write.execute(sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
    source.dispose()
    target.dispose()
    sqlite_file.rename(sqlite_file.with_name(sqlite_file.name + ".moved-to-postgresql"))
    log(f"moved the hub's database from {sqlite_file} to PostgreSQL")
    return True
