#!/usr/bin/env bash
# The private PostgreSQL of this checkout: start | stop | status | url | test-url | private-url | restart.
# `url` prints DATABASE_URL when it is set (in the environment or in .env), and otherwise
# starts the private server if needed and prints its address, as `private-url` always does.
# `test-url` is `url` without .env: the tests never touch a database named only there.
# `restart fast|immediate [seconds]` restarts it on the same port (immediate: a crash), down
# for that many seconds, for chaos runs. `signal STOP|CONT` freezes or thaws every process of the
# running server (the postmaster first, so that it forks no new ones, then its children): a
# database that stops answering with its sockets open, for chaos runs and tests.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
DATA=$ROOT/.pgdata
DB_NAME=flashsale

# As root, the server runs as the postgres user, who may not be allowed into this checkout
# (under /root, say): then the data lives in a folder of /tmp named after the checkout.
if [ "$(id -u)" = 0 ] && ! (cd / && runuser -u postgres -- test -x "$ROOT"); then
    DATA=/tmp/flashsale-pgdata-$(echo "$ROOT" | cksum | cut -d' ' -f1)
fi
LOG=$DATA.log

# PostgreSQL refuses to run as root: run its programs as the postgres user then.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

die() { echo "pg.sh: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() { as_postgres "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

# The port of the running server is the fourth line of postmaster.pid.
port() { sed -n 4p "$DATA/postmaster.pid"; }

init() {
    [ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin; set PGBIN)"
    mkdir -p "$DATA"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$DATA"
        as_postgres test -w "$DATA" ||
            die "the postgres user cannot reach $DATA: make its parent folders traversable (chmod o+x) or set DATABASE_URL"
    fi
    chmod 700 "$DATA"
    as_postgres "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
max_connections = 100
CONF
}

start() {
    [ -f "$DATA/PG_VERSION" ] || init
    if ! running; then
        touch "$LOG"
        [ "$(id -u)" = 0 ] && chown postgres: "$LOG"
        as_postgres "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 -o "-p $(free_port) -k /tmp" start >/dev/null ||
            die "could not start PostgreSQL; see $LOG"
    fi
    if [ -z "$("$PGBIN/psql" "$(url postgres)" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]; then
        "$PGBIN/psql" "$(url postgres)" -qc "CREATE DATABASE $DB_NAME" >/dev/null
    fi
}

# The private server's address: its unix socket in /tmp, cheaper than TCP for every message.
url() { echo "postgresql://postgres@/${1:-$DB_NAME}?host=/tmp&port=$(port)"; }

# DATABASE_URL from the environment, else from .env, else empty.
configured_url() {
    if [ -n "${DATABASE_URL:-}" ]; then
        echo "$DATABASE_URL"
    elif [ -f "$ROOT/.env" ]; then
        "$ROOT/.venv/bin/python" -c 'import sys, dotenv; print(dotenv.dotenv_values(sys.argv[1]).get("DATABASE_URL") or "")' "$ROOT/.env"
    fi
}

case "${1:-}" in
    start) start; echo "PostgreSQL running: $(url)" ;;
    url)
        configured=$(configured_url)
        if [ -z "$configured" ]; then start; configured=$(url); fi
        echo "$configured" ;;
    restart)  # fast: a clean shutdown; immediate: a crash, recovered from the WAL at start
        port=$(port)
        as_postgres "$PGBIN/pg_ctl" -D "$DATA" -m "${2:-fast}" -w stop >/dev/null
        sleep "${3:-0}"  # seconds to stay down
        as_postgres "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 -o "-p $port -k /tmp" start >/dev/null ||
            die "could not restart PostgreSQL; see $LOG"
        echo "PostgreSQL restarted (${2:-fast}) on port $port" ;;
    test-url) if [ -n "${DATABASE_URL:-}" ]; then echo "$DATABASE_URL"; else start; url; fi ;;
    signal)
        case "${2:-}" in STOP|CONT) ;; *) die "usage: deploy/pg.sh signal STOP|CONT" ;; esac
        running || die "PostgreSQL is not running"
        postmaster=$(sed -n 1p "$DATA/postmaster.pid")
        kill -"$2" "$postmaster"
        pkill -"$2" -P "$postmaster" || true  # no children left is not an error
        if [ "$2" = CONT ]; then  # make sure that none stays stopped
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                ps -o stat= -p "$postmaster" --ppid "$postmaster" | grep -q '^T' || break
                sleep 0.1
                kill -CONT "$postmaster"
                pkill -CONT -P "$postmaster" || true
            done
            ! ps -o stat= -p "$postmaster" --ppid "$postmaster" | grep -q '^T' || die "PostgreSQL is still stopped"
        fi
        echo "PostgreSQL sent SIG$2" ;;
    private-url) start; url ;;
    data-dir) echo "$DATA" ;;
    stop) if running; then as_postgres "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; fi; echo "PostgreSQL stopped" ;;
    status) if running; then echo "running on port $(port)"; else echo "stopped"; fi ;;
    *) die "usage: deploy/pg.sh start | stop | status | url | test-url | private-url | restart fast|immediate [seconds down] | signal STOP|CONT" ;;
esac
