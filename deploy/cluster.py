"""A local high-availability flash sale: a pg_auto_failover monitor, a PostgreSQL 15 primary and
its synchronous standby, two app hosts (gunicorn, each on a loopback address of its own) and nginx
in front of them.

    python -m deploy.cluster up | down | status

Everything lives in one folder, .cluster/ of the checkout (or a folder of /tmp when the postgres
user cannot enter the checkout), and state.json there holds every port, pid and URL.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import psycopg
import requests

import db
import reset_db
from deploy import nginx
# The chaos runs and the tests reach these through this module.
from deploy.processes import (ClusterError, alive, free_ports, kill_tree, process_tree,  # noqa: F401
                              signal_all, wait_for, wait_gone)

ROOT = Path(__file__).resolve().parent.parent

PG_BIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))  # pg_auto_failover's PostgreSQL
DB_NAME = "flashsale"
NODES = ["node1", "node2"]  # node1 starts as the primary
APP_HOSTS = {"app1": "127.0.1.1", "app2": "127.0.1.2"}
MONITOR_SETTINGS = ROOT / "deploy" / "monitor-failover.conf"
AS_ROOT = os.getuid() == 0


# --- the folder and its state ----------------------------------------------------------------

def postgres_can_enter(path):
    return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
                          cwd="/", capture_output=True).returncode == 0


def cluster_folder():
    """.cluster/ of the checkout, or a folder of /tmp named after it when PostgreSQL (run as the
    postgres user) could not enter the checkout."""
    if AS_ROOT and not postgres_can_enter(ROOT):
        return Path(f"/tmp/flashsale-cluster-{zlib.crc32(str(ROOT).encode())}")
    return ROOT / ".cluster"


FOLDER = cluster_folder()
STATE_FILE = FOLDER / "state.json"


def load_state():
    """The running cluster's state, or None when no cluster was brought up."""
    try:
        return json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        return None


def save_state(state):
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


# --- PostgreSQL and pg_auto_failover ----------------------------------------------------------

def pg_home(name):
    return FOLDER / "pg" / name


def pgdata(name):
    return pg_home(name) / "data"


def pg_environment(name):
    """Each pg_autoctl keeps its configuration, state and pid files in folders of its own."""
    home = pg_home(name)
    return {"XDG_CONFIG_HOME": f"{home}/config", "XDG_DATA_HOME": f"{home}/share",
            "XDG_RUNTIME_DIR": f"{home}/run", "PATH": f"{PG_BIN}:/usr/bin:/bin"}


def as_postgres(name, command):
    """`command` run as the postgres user (PostgreSQL refuses root) in node `name`'s environment."""
    environment = [f"{key}={value}" for key, value in pg_environment(name).items()]
    prefix = ["runuser", "-u", "postgres", "--"] if AS_ROOT else []
    return prefix + ["env", *environment, *command]


def pg_autoctl(name, *arguments, timeout=60):
    """Run a pg_autoctl command for node `name`; its standard output, or ClusterError."""
    command = as_postgres(name, ["pg_autoctl", *arguments, "--pgdata", str(pgdata(name))])
    done = subprocess.run(command, cwd="/", capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ClusterError(f"pg_autoctl {' '.join(arguments)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def make_pg_home(name):
    for sub in ["config", "share", "run"]:
        (pg_home(name) / sub).mkdir(parents=True, exist_ok=True)
    if AS_ROOT:
        shutil.chown(FOLDER / "pg", "postgres", "postgres")
        for path in [pg_home(name), *pg_home(name).iterdir()]:
            shutil.chown(path, "postgres", "postgres")


def start_keeper(state, name, *create):
    """Start the pg_autoctl service of node `name` (the monitor or a PostgreSQL node) in the
    background, which starts and watches its PostgreSQL: `pg_autoctl run`, or, given the `create`
    arguments, `pg_autoctl create ... --run`, which makes the node first. Records its pid."""
    component = state["monitor"] if name == "monitor" else state["nodes"][name]
    command = ["create", *create, "--run"] if create else ["run"]
    with open(component["log"], "ab") as log:
        process = subprocess.Popen(as_postgres(name, ["pg_autoctl", *command, "--pgdata", str(pgdata(name))]),
                                   cwd="/", stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    component["pid"] = process.pid
    save_state(state)


def monitor_url(state):
    return f"postgresql://autoctl_node@127.0.0.1:{state['monitor']['port']}/pg_auto_failover?sslmode=disable"


def node_url(state, name, database=DB_NAME):
    return f"postgresql://postgres@127.0.0.1:{state['nodes'][name]['port']}/{database}?connect_timeout=2"


def accepts_connections(url):
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def create_monitor(state):
    """Make and start the monitor, then give it the failover timing of deploy/monitor-failover.conf."""
    make_pg_home("monitor")
    start_keeper(state, "monitor", "monitor", "--pgctl", str(PG_BIN / "pg_ctl"),
                 "--pgport", str(state["monitor"]["port"]), "--hostname", "127.0.0.1",
                 "--listen", "127.0.0.1", "--auth", "trust", "--no-ssl")
    wait_for("the monitor", lambda: accepts_connections(monitor_url(state)), 30)
    settings = pgdata("monitor") / "failover-timing.conf"
    shutil.copy(MONITOR_SETTINGS, settings)
    if AS_ROOT:
        shutil.chown(settings, "postgres", "postgres")
    with open(pgdata("monitor") / "postgresql.conf", "a") as conf:
        conf.write("include 'failover-timing.conf'\n")
    superuser = f"postgresql://postgres@127.0.0.1:{state['monitor']['port']}/postgres?connect_timeout=2"
    with psycopg.connect(superuser, autocommit=True) as conn, conn.transaction():
        conn.execute(db.query("reload_configuration"))


def create_node(state, name):
    """Make, register and start a PostgreSQL node: the first becomes the primary (and creates the
    flashsale database), the next one a synchronous standby made from a base backup."""
    make_pg_home(name)
    start_keeper(state, name, "postgres", "--pgctl", str(PG_BIN / "pg_ctl"),
                 "--pgport", str(state["nodes"][name]["port"]), "--hostname", "127.0.0.1",
                 "--listen", "127.0.0.1", "--name", name, "--dbname", DB_NAME,
                 "--monitor", monitor_url(state), "--auth", "trust", "--no-ssl")


def node_states(state):
    """{node name: (reported state, assigned state)}, as the monitor sees them."""
    nodes = json.loads(pg_autoctl("monitor", "show", "state", "--json", timeout=10))
    return {node["nodename"]: (node["current_group_state"], node["assigned_group_state"]) for node in nodes}


def primary(state):
    """The name of the node that takes writes now (or is about to), from the monitor."""
    for name, (reported, assigned) in node_states(state).items():
        if assigned in ("single", "wait_primary", "primary") and reported == assigned:
            return name
    return None


def synchronous(state, name):
    """True when node `name` is a primary whose commits wait for its standby."""
    try:
        with psycopg.connect(node_url(state, name), autocommit=True) as conn, conn.transaction():
            row = conn.execute(db.query("replication")).fetchone()
    except psycopg.Error:
        return False
    return row[0] == "synchronous"


def healthy_pair(state):
    """The primary's name once one node is primary and the other its synchronous standby."""
    states = node_states(state)
    primaries = [name for name, pair in states.items() if pair == ("primary", "primary")]
    standbys = [name for name, pair in states.items() if pair == ("secondary", "secondary")]
    if len(primaries) == 1 and len(standbys) == len(NODES) - 1 and synchronous(state, primaries[0]):
        return primaries[0]
    return None


def wait_healthy(state, seconds=90):
    """Wait until one node is primary and the other its synchronous standby; return the primary."""
    return wait_for("a primary with its synchronous standby", lambda: healthy_pair(state), seconds, 0.5)


def checkpoint(state, name):
    """A checkpoint on the primary: a base backup starts with one, and waits ~7 s for a lazy one."""
    with psycopg.connect(node_url(state, name), autocommit=True) as conn, conn.transaction():
        conn.execute(db.query("checkpoint"))


# --- app hosts and nginx ----------------------------------------------------------------------

def start_app_host(state, name):
    """A gunicorn master and its workers on the app host's own loopback address."""
    app = state["apps"][name]
    environment = {**os.environ, "DATABASE_URL": state["database_url"], "API_URL": app["url"]}
    with open(app["log"], "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", app["address"]],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app["pid"] = process.pid
    save_state(state)


def ready(url):
    """The /readyz answer of `url` when it is 200, else None."""
    try:
        answer = requests.get(f"{url}/readyz", timeout=2)
        return answer.json() if answer.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def start_nginx(state):
    """nginx from the project's template (deploy/nginx.py), in front of both app hosts. A host that
    refuses a connection is left out for 2 s, and the request goes to the other one; a request
    already sent is never sent again (no non_idempotent in proxy_next_upstream)."""
    config = state["nginx"]
    prefix = nginx.make_folder(config["prefix"])
    upstreams = [f"{app['address']} max_fails=1 fail_timeout=2s" for app in state["apps"].values()]
    (prefix / "nginx.conf").write_text(
        nginx.render(upstreams, config["address"], prefix, user=nginx.worker_user()))
    with open(config["log"], "ab") as log:
        process = subprocess.Popen(
            [nginx.nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    config["pid"] = process.pid
    save_state(state)


# --- up, down, status -------------------------------------------------------------------------

def new_state():
    monitor_port, *node_ports = free_ports(1 + len(NODES))
    nginx_port, = free_ports(1)
    app_ports = [free_ports(1, host)[0] for host in APP_HOSTS.values()]
    logs = FOLDER / "logs"
    state = {
        "folder": str(FOLDER),
        "monitor": {"port": monitor_port, "log": str(logs / "monitor.log")},
        "nodes": {name: {"port": port, "log": str(logs / f"{name}.log")}
                  for name, port in zip(NODES, node_ports)},
        "apps": {},
        "nginx": {"address": f"127.0.0.1:{nginx_port}", "prefix": str(FOLDER / "nginx"),
                  "log": str(logs / "nginx.log")},
        "url": f"http://127.0.0.1:{nginx_port}",
    }
    hosts = ",".join(f"127.0.0.1:{port}" for port in node_ports)
    # Every node is listed; libpq takes the first that accepts writes, and gives up on a node
    # that does not answer within 2 s (a frozen one).
    state["database_url"] = (f"postgresql://postgres@{hosts}/{DB_NAME}"
                             "?target_session_attrs=read-write&connect_timeout=2")
    for (name, host), port in zip(APP_HOSTS.items(), app_ports):
        state["apps"][name] = {"address": f"{host}:{port}", "url": f"http://{host}:{port}",
                               "log": str(logs / f"{name}.log")}
    return state


def running_pids(state):
    components = [state.get("monitor", {}), *state.get("nodes", {}).values(),
                  *state.get("apps", {}).values(), state.get("nginx", {})]
    return [component["pid"] for component in components if component.get("pid") and alive(component["pid"])]


def up():
    state = load_state()
    if state and running_pids(state):
        print(f"The cluster is already up ({STATE_FILE}); `make cluster-down` stops it.")
        status()
        return
    started = time.monotonic()
    if FOLDER.exists():  # the last cluster's data goes, out of the way first, then in the background
        old = FOLDER.with_name(f"{FOLDER.name}.old.{os.getpid()}")
        FOLDER.rename(old)
        subprocess.Popen(["rm", "-rf", str(old)], start_new_session=True)
    (FOLDER / "logs").mkdir(parents=True)
    if AS_ROOT:
        shutil.chown(FOLDER / "logs", "postgres", "postgres")  # the keepers write their logs there
    state = new_state()
    save_state(state)
    try:
        step("monitor")
        create_monitor(state)

        first, *others = NODES
        step(f"{first}, the primary")
        create_node(state, first)
        wait_for(f"{first} as the primary", lambda: primary(state) == first
                 and accepts_connections(node_url(state, first)), 30)
        reset_db.reset(database_url=node_url(state, first))
        checkpoint(state, first)

        for name in others:
            step(f"{name}, its synchronous standby")
            create_node(state, name)
        for name in APP_HOSTS:  # they find the primary by themselves
            start_app_host(state, name)
        start_nginx(state)

        step("waiting for the standby, the app hosts and nginx")
        wait_healthy(state, 60)
        for name, app in state["apps"].items():
            wait_for(f"app host {name}", lambda: ready(app["url"]), 30)
        wait_for("nginx", lambda: ready(state["url"]), 10)
    except (ClusterError, psycopg.Error, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"{exc}\nLogs: {FOLDER / 'logs'}; `make cluster-down` stops what started.") from None
    print(f"Cluster up in {time.monotonic() - started:.1f} s.")
    status()


def step(what):
    print(f"  starting {what}", flush=True)


def stop_keepers(state, names):
    """Stop pg_autoctl (which stops its PostgreSQL first) for each node of `names`."""
    for name in names:
        component = state["monitor"] if name == "monitor" else state["nodes"][name]
        pid = component.get("pid")
        if not pid or not alive(pid):
            continue
        tree = process_tree(pid)
        try:
            pg_autoctl(name, "stop", timeout=10)
        except (ClusterError, subprocess.TimeoutExpired):
            pass
        if not wait_gone(tree, 20):
            kill_tree(pid)
            signal_all(tree, signal.SIGKILL)


def stop_process(component, signum):
    pid = component.get("pid")
    if pid and alive(pid):
        tree = process_tree(pid)
        signal_all([pid], signum)
        if not wait_gone(tree, 15):
            signal_all(tree, signal.SIGKILL)


def down():
    state = load_state()
    if not state:
        print("No cluster to stop.")
        return
    stop_process(state["nginx"], signal.SIGQUIT)  # graceful: answers in flight are finished
    for app in state["apps"].values():
        stop_process(app, signal.SIGTERM)
    # The standby first, then the primary: the monitor never sees a primary to replace.
    try:
        leader = primary(state) if alive(state["monitor"].get("pid", 0)) else None
    except (ClusterError, subprocess.TimeoutExpired):
        leader = None
    stop_keepers(state, sorted(NODES, key=lambda name: name == leader))
    stop_keepers(state, ["monitor"])
    left = running_pids(state)
    if left:
        raise ClusterError(f"processes still running: {left}")
    print(f"Cluster stopped; its data and logs stay in {FOLDER} until the next cluster-up.")


def status():
    state = load_state()
    if not state or not running_pids(state):
        print("No cluster is running: `make cluster-up` starts one.")
        return
    rows = [("monitor", f"127.0.0.1:{state['monitor']['port']}", state["monitor"].get("pid"))]
    rows += [(name, f"127.0.0.1:{node['port']}", node.get("pid")) for name, node in state["nodes"].items()]
    rows += [(f"app host {name}", app["address"], app.get("pid")) for name, app in state["apps"].items()]
    rows += [("nginx", state["nginx"]["address"], state["nginx"].get("pid"))]
    print(f"{'component':<14} {'address':<22} {'pid':>8}  state")
    for name, address, pid in rows:
        running = bool(pid) and alive(pid)
        detail = "running" if running else "stopped"
        if running and name.startswith("app host"):
            answer = ready(f"http://{address}")
            detail += f", readyz: {answer}" if answer else ", not ready"
        print(f"{name:<14} {address:<22} {pid or '-':>8}  {detail}")
    print(f"\nAPI (through nginx): {state['url']}")
    print(f"DATABASE_URL of the app hosts: {state['database_url']}")
    print(f"Folder: {state['folder']}")
    if alive(state["monitor"].get("pid", 0)):
        try:
            print("\n" + pg_autoctl("monitor", "show", "state", timeout=10).rstrip())
        except (ClusterError, subprocess.TimeoutExpired) as exc:
            print(f"\nmonitor: {exc}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    options = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `status | head` ends quietly, as other tools do
    if AS_ROOT and shutil.which("runuser") is None:
        sys.exit("cluster: runuser is missing (util-linux)")
    for program in [PG_BIN / "pg_ctl", shutil.which("pg_autoctl"), shutil.which("nginx", path=nginx.SEARCH_PATH)]:
        if program is None or not Path(program).exists():
            sys.exit(f"cluster: {program or 'pg_autoctl or nginx'} not found: `make cluster-up` installs them")
    try:
        {"up": up, "down": down, "status": status}[options.command]()
    except ClusterError as exc:
        sys.exit(f"cluster {options.command}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
