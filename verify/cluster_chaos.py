"""Faults in the running local cluster (deploy/cluster.py) while buyers purchase through nginx with
the proof's --retry (same Idempotency-Key on every attempt); then the proof's check and the
history check (history.py) on the surviving primary.

Each mode sells at a steady pace while its faults happen, a little longer, then sells the rest of
the stock in one burst, so that the sale ends sold out. Modes:

  kill-primary    SIGKILL the primary's whole node (keeper, postmaster, backends) three times;
                  the monitor promotes the standby, and the killed node, started again, rejoins
                  as the standby (pg_rewind) before the next kill
  switchover      `pg_autoctl perform switchover`, twice
  kill-app-host   SIGKILL one app host's gunicorn master and workers, start it again; each host once
  slow-clients    200 slowloris connections through nginx, a header line a second
  freeze-primary  SIGSTOP every process of the primary's node past the failover, then SIGCONT
"""
import argparse
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import reset_db
from deploy import cluster
from flashsale import settings as configuration
from verify import chaos, proof

MODES = ["kill-primary", "switchover", "kill-app-host", "slow-clients", "freeze-primary"]
ATTEMPTS = 40  # per purchase: enough retries (Retry-After: 1) to outlast a failover
TAIL_SECONDS = 3  # steady sales after the last fault, before the closing burst
SLOW_CLIENTS = 200
SLOW_CLIENT_SECONDS = 12


class Run:
    """One mode's run: the cluster's state, its fault moments, notes and progress."""

    def __init__(self, mode, state, options):
        self.mode, self.state, self.options = mode, state, options
        self.faults = []  # (label, time.monotonic() when it struck, as the answers' times)
        self.notes = []
        self.phase = "starting"
        self.error = None
        self.done = threading.Event()
        self.done_at = None
        self.started = time.monotonic()
        self.worker_timeouts_before = worker_timeouts(state)

    def fault(self, label):
        self.faults.append((label, time.monotonic()))
        self.phase = f"fault {len(self.faults)}: {label}"

    def note(self, text):
        self.notes.append(text)
        print(f"  [{self.mode}] {text}", flush=True)

    def elapsed(self):
        return time.monotonic() - self.started


def app_host_settings(state):
    """The app hosts' settings: they inherit this process's environment (deploy/cluster.py)."""
    return configuration.from_environ({**configuration.environment(), "DATABASE_URL": state["database_url"]})


def worker_timeouts(state):
    """gunicorn's WORKER TIMEOUT lines in the app hosts' logs so far: a worker killed for
    overrunning its timeout, which the client-side deadline should make never happen."""
    return sum(Path(app["log"]).read_text(errors="replace").count(chaos.WORKER_TIMEOUT_LINE)
               for app in state["apps"].values() if Path(app["log"]).exists())


# --- faults ---------------------------------------------------------------------------------

def other_node(name):
    return next(node for node in cluster.NODES if node != name)


def writable(run, name):
    """True when node `name` accepts a read-write session."""
    url = cluster.node_url(run.state, name) + "&target_session_attrs=read-write"
    return cluster.accepts_connections(url)


def wait_healthy(run, seconds=90):
    return cluster.wait_healthy(run.state, seconds)


def kill_primary(run):
    kills = run.options.kills
    for number in range(kills):
        time.sleep(run.options.pause)
        victim = wait_healthy(run)
        survivor = other_node(victim)
        cluster.kill_tree(run.state["nodes"][victim]["pid"])
        run.fault(f"SIGKILL {victim}")
        struck = time.monotonic()
        cluster.wait_for(f"{survivor} promoted", lambda: writable(run, survivor), 60, interval=0.1)
        promoted = time.monotonic() - struck
        run.phase = f"fault {number + 1}/{kills}: {victim} killed, {survivor} promoted; {victim} rejoining"
        cluster.start_keeper(run.state, victim)
        wait_healthy(run)
        run.note(f"kill {number + 1}: {survivor} writable {promoted:.1f} s after the kill; "
                 f"{victim} back as synchronous standby {time.monotonic() - struck:.1f} s after it")


def switchover(run):
    for number in range(2):
        time.sleep(run.options.pause)
        before = wait_healthy(run)
        target = other_node(before)
        run.fault(f"switchover from {before}")
        struck = time.monotonic()
        promoted = []  # when the target took writes, seen from a thread while pg_autoctl runs
        watcher = threading.Thread(target=lambda: promoted.append(cluster.wait_for(
            f"{target} promoted", lambda: writable(run, target) and time.monotonic(), 60, 0.1)), daemon=True)
        watcher.start()
        cluster.pg_autoctl("monitor", "perform", "switchover", timeout=90)
        after = wait_healthy(run)
        watcher.join(60)
        took_writes = f"{promoted[0] - struck:.1f} s" if promoted else "not seen"
        run.note(f"switchover {number + 1}: {before} -> {after}, {target} writable after {took_writes}, "
                 f"healthy again {time.monotonic() - struck:.1f} s after it began")


def kill_app_host(run):
    for name, app in run.state["apps"].items():
        time.sleep(run.options.pause)
        cluster.kill_tree(app["pid"])
        run.fault(f"SIGKILL app host {name}")
        struck = time.monotonic()
        time.sleep(1)  # down for a second, as a crashed machine would be, at least
        cluster.start_app_host(run.state, name)
        cluster.wait_for(f"app host {name}", lambda: cluster.ready(app["url"]), 30)
        run.note(f"app host {name} killed, serving again {time.monotonic() - struck:.1f} s later")


def slow_clients(run):
    """Slowloris: connections that send a request line, then a header line a second, never ending
    their headers. nginx closes each once its client_header_timeout (5 s) has passed."""
    time.sleep(run.options.pause)
    host, port = run.state["nginx"]["address"].split(":")
    connections = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.create_connection((host, int(port)), timeout=2)
        sock.sendall(b"POST /buy_ticket HTTP/1.1\r\nHost: flashsale\r\n")
        connections.append(sock)
    run.fault(f"{SLOW_CLIENTS} slow clients")
    opened = time.monotonic()
    closed_after = {}  # socket -> seconds until nginx closed it
    while time.monotonic() - opened < SLOW_CLIENT_SECONDS and len(closed_after) < len(connections):
        readable, _, _ = select.select([s for s in connections if s not in closed_after], [], [], 1.0)
        for sock in readable:
            try:
                if not sock.recv(4096):
                    closed_after[sock] = time.monotonic() - opened
            except OSError:
                closed_after[sock] = time.monotonic() - opened
        for sock in connections:
            if sock not in closed_after:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed_after[sock] = time.monotonic() - opened
        run.phase = f"{len(connections) - len(closed_after)} slow clients still open"
    for sock in connections:
        sock.close()
    times = sorted(closed_after.values())
    run.note(f"nginx closed {len(times)} of {len(connections)} slow connections"
             + (f", after {times[0]:.1f} to {times[-1]:.1f} s" if times else ""))


def freeze_primary(run):
    time.sleep(run.options.pause)
    victim = wait_healthy(run)
    survivor = other_node(victim)
    frozen = cluster.process_tree(run.state["nodes"][victim]["pid"])
    cluster.signal_all(frozen, signal.SIGSTOP)
    run.fault(f"SIGSTOP {victim}")
    struck = time.monotonic()
    try:
        cluster.wait_for(f"{survivor} promoted", lambda: writable(run, survivor), 60, interval=0.1)
        promoted = time.monotonic() - struck
        run.phase = f"{victim} frozen, {survivor} promoted"
        time.sleep(2)  # frozen past the failover
    finally:
        cluster.signal_all(frozen, signal.SIGCONT)
    thawed = time.monotonic() - struck
    wait_healthy(run)
    run.note(f"{survivor} writable {promoted:.1f} s after the freeze; {victim} thawed at {thawed:.1f} s, "
             f"back as synchronous standby {time.monotonic() - struck:.1f} s after the freeze")


FAULTS = {"kill-primary": kill_primary, "switchover": switchover, "kill-app-host": kill_app_host,
          "slow-clients": slow_clients, "freeze-primary": freeze_primary}

# Seconds each mode's faults usually take, to size the stock: the steady phase sells about
# rate x this, and the stock is twice that.
EXPECTED_SECONDS = {"kill-primary": 45, "switchover": 25, "kill-app-host": 12, "slow-clients": 18,
                    "freeze-primary": 25}
SELL_OUT_SECONDS = 15  # about, for the closing burst and the checks, in the progress lines


def inject(run):
    try:
        FAULTS[run.mode](run)
    except Exception as exc:  # reported as the mode's failure, after the buyers are done
        run.error = f"{type(exc).__name__}: {exc}"
        run.note(f"fault injection failed: {run.error}")
    finally:
        run.done_at = time.monotonic()
        run.phase = "faults over; selling out"
        run.done.set()


# --- buyers ---------------------------------------------------------------------------------

def purchase(burst):
    """A new buyer's purchase, with its Idempotency-Key, and its bearer token when the service
    verifies tokens (AUTH_JWT_SECRET, which the app hosts read too)."""
    bought = proof.Purchase(user_id=f"buyer-{uuid.uuid4().hex[:12]}", key=str(uuid.uuid4()))
    if burst.token_secret:
        bought.token = proof.mint_token(burst, bought.user_id)
    return bought


def buyers(run, burst, stock, database_url):
    """Purchases at `run.options.rate` per second while the faults last and TAIL_SECONDS more
    (at most 90% of the stock), then enough at once to sell out what is left."""
    interval = 1.0 / run.options.rate
    started = time.monotonic()
    sent = 0
    while sent < 0.9 * stock and time.monotonic() - started < run.options.max_seconds:
        if run.done.is_set() and time.monotonic() - run.done_at > TAIL_SECONDS:
            break
        yield purchase(burst)
        sent += 1
        time.sleep(max(0.0, started + sent * interval - time.monotonic()))
    run.done.wait(run.options.max_seconds)  # steady sales ended early: the faults end first
    remaining = cluster.wait_for("the item's remaining stock", lambda: remaining_stock(database_url), 30)
    run.phase = f"selling out: {remaining[0]} units left"
    for _ in range(remaining[0] + max(50, remaining[0] // 4)):
        yield purchase(burst)


def remaining_stock(database_url):
    """[units left] (a list, true even when none are left), or None while the database is away."""
    try:
        item, _ = proof.database_state(database_url)
        return [item["remaining"]]
    except Exception:
        return None


def show_progress(run, answered, stop):
    """Every 2 s: the mode, seconds elapsed and about how many are left, answers so far, the fault."""
    expected = EXPECTED_SECONDS[run.mode] + SELL_OUT_SECONDS
    while not stop.wait(2.0):
        left = f"about {expected - run.elapsed():.0f} s left" if run.elapsed() < expected else "running late"
        print(f"  [{run.mode}] {run.elapsed():4.0f} s elapsed, {left}; {answered[0]} purchases answered; "
              f"{run.phase}", flush=True)


# --- figures --------------------------------------------------------------------------------

def sales(purchases):
    """(sent at, answered at) of every attempt answered 201."""
    return sorted((at - latency, at) for p in purchases
                  for (status, _), latency, at in zip(p.answers, p.latencies, p.answered_at) if status == 201)


def fault_figures(run, purchases):
    """Per fault: seconds from the fault to the first sale sent after it, and the longest stretch
    without any sale from the fault until the next fault (or the end of the steady phase)."""
    sold = sales(purchases)
    answered = [at for _, at in sold]
    to_sale, gaps = [], []
    for index, (_, struck) in enumerate(run.faults):
        until = run.faults[index + 1][1] if index + 1 < len(run.faults) else struck + 60
        after = [at for sent, at in sold if sent >= struck]
        to_sale.append(round(min(after) - struck, 1) if after else None)
        window = [struck] + [at for at in answered if struck <= at <= until]
        gaps.append(round(max(b - a for a, b in zip(window, window[1:])), 1) if len(window) > 1 else None)
    return to_sale, gaps


def figures(run, stock, purchases, item, rows, failures):
    report = {"faults": len(run.faults), "faults_ended_at": run.faults[-1][1] if run.faults else time.monotonic(),
              "budget": app_host_settings(run.state).retry_budget,
              "worker_timeouts": worker_timeouts(run.state) - run.worker_timeouts_before}
    result = chaos.figures(run.mode, purchases, rows, failures, report)
    statuses = Counter(status for p in purchases for status, _ in p.answers)
    to_sale, gaps = fault_figures(run, purchases)
    return {
        "mode": run.mode,
        "requests": result["requests"],
        "faults": len(run.faults),
        "201": result["201"],
        "409": result["409"],
        "503": statuses[503],
        "other 5xx": sum(count for status, count in statuses.items() if status and status >= 500 and status != 503),
        "transport errors": result["transport errors"],
        "slowest s": result["slowest s"],
        "budget s": result["budget s"],
        "worker timeouts": result["worker timeouts"],
        "lost": result["lost"],
        "double sales": result["double sales"],
        "oversold": max(0, sum(row["quantity"] for row in rows) - stock) + (item["remaining"] < 0),
        "fault to sale s": "/".join(str(seconds) for seconds in to_sale) or "-",
        "longest no-sale s": "/".join(str(seconds) for seconds in gaps) or "-",
        "history": "ok" if not any(failure.startswith("the history") for failure in failures) else "FAILED",
        "verdict": "ok" if not failures else "FAILED",
    }


# --- one mode -------------------------------------------------------------------------------

def run_mode(mode, state, options):
    """One mode: reset the sale on the primary, buy through nginx while the faults happen, check.
    Returns (figures, failures, notes)."""
    run = Run(mode, state, options)
    print(f"--- {mode}: buyers at {options.rate:.0f}/s through nginx {state['url']}, with --retry", flush=True)
    leader = wait_healthy(run)
    for name, app in state["apps"].items():  # an earlier run may have left one down
        if not cluster.alive(app.get("pid", 0)):
            cluster.start_app_host(state, name)
        cluster.wait_for(f"app host {name}", lambda: cluster.ready(app["url"]), 30)
    stock = int(options.rate * EXPECTED_SECONDS[mode] * 2)
    reset_db.reset(stock=stock, database_url=cluster.node_url(state, leader))
    time.sleep(1)  # past the workers' sold-out memory of an earlier sale (SOLD_OUT_CACHE_SECONDS)

    burst = proof.make_options(retry=True, url=state["url"], database_url=state["database_url"], stock=stock,
                               processes=options.processes)
    burst.attempts = ATTEMPTS
    purchases, answered, stop = [], [0], threading.Event()
    with proof.BURST_PROCESSES.Pool(burst.processes, proof.start_process, (burst,)) as pool:
        threading.Thread(target=inject, args=(run,), daemon=True).start()
        threading.Thread(target=show_progress, args=(run, answered, stop), daemon=True).start()
        try:
            for done in pool.imap_unordered(proof.buy, buyers(run, burst, stock, state["database_url"])):
                purchases.append(done)
                answered[0] += 1
        finally:
            stop.set()
    run.done.wait(120)

    survivor = wait_healthy(run)
    burst.requests = len(purchases)
    burst.cache_seconds = app_host_settings(state).sold_out_cache
    judgement = proof.judge(burst, purchases, cluster.node_url(state, survivor))
    item, rows, failures = judgement.item, judgement.rows, judgement.failures
    for line in judgement.history.lines:
        print(f"  [{mode}] {line}", flush=True)
    if not standby_agrees(state, other_node(survivor), rows):
        failures.append("the standby does not hold the primary's purchases")
    if run.error:
        failures.append(f"fault injection failed: {run.error}")
    if not run.faults:
        failures.append("no fault was injected")
    result = figures(run, stock, purchases, item, rows, failures)
    result["primary after"] = survivor
    print(f"  [{mode}] checked on the surviving primary {survivor}: {item['sold']} sold of {stock}, "
          f"{len(rows)} purchase rows; {run.elapsed():.0f} s", flush=True)
    return result, failures, run.notes


def standby_agrees(state, standby, rows, seconds=15):
    """True once the standby has replayed exactly the primary's purchase rows (a synchronous
    standby has flushed every commit before it was acknowledged, and applies it just after)."""
    expected = [(row["id"], row["idempotency_key"]) for row in rows]

    def replayed():
        try:
            _, standby_rows = proof.database_state(cluster.node_url(state, standby))
        except Exception:
            return False
        return [(row["id"], row["idempotency_key"]) for row in standby_rows] == expected
    try:
        return cluster.wait_for("the standby's copy", replayed, seconds, interval=0.5)
    except cluster.ClusterError:
        return False


def print_table(results):
    columns = [column for column in results[0] if column != "primary after"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for result in results:
        print("| " + " | ".join(str(result[column]) for column in columns) + " |")


def parse_options(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="*", help=f"some of {', '.join(MODES)} (default: all)")
    parser.add_argument("--rate", type=float, default=100, help="purchases per second while faults happen (default 100)")
    parser.add_argument("--processes", type=int, default=50, help="buyer processes (default 50)")
    parser.add_argument("--pause", type=float, default=3, help="seconds of sales before each fault (default 3)")
    parser.add_argument("--kills", type=int, default=3, help="kill-primary: kills in a row (default 3)")
    parser.add_argument("--max-seconds", type=float, default=240, help="cap on each mode's steady phase (default 240)")
    options = parser.parse_args(argv)
    unknown = set(options.modes) - set(MODES) - {"all"}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))} (choose from {', '.join(MODES)})")
    if not (options.rate > 0 and options.processes >= 1 and options.pause >= 0 and options.max_seconds > 0
            and options.kills >= 1):
        parser.error("--rate and --max-seconds must be positive, --processes and --kills at least 1, "
                     "--pause at least 0")
    options.modes = MODES if not options.modes or "all" in options.modes else options.modes
    return options


def main(argv=None):
    options = parse_options(argv)
    state = cluster.load_state()
    started_here = not state or not cluster.running_pids(state)
    results, notes = [], []
    try:
        if started_here:  # and stopped at the end; a cluster already up is left up
            cluster.up()
            state = cluster.load_state()
        for mode in options.modes:
            result, failures, mode_notes = run_mode(mode, state, options)
            results.append(result)
            notes += [f"{mode}: {note}" for note in mode_notes]
            for failure in failures:
                print(f"  FAILURE: {failure}")
    except cluster.ClusterError as exc:
        print(f"cluster-chaos: {exc}")
        return 1
    finally:
        if started_here:
            cluster.down()
    if not results:
        return 1
    print()
    print_table(results)
    print()
    for note in notes:
        print(f"- {note}")
    failed = [result["mode"] for result in results if result["verdict"] != "ok"]
    print(f"FAILURE: {', '.join(failed)}" if failed else "SUCCESS: no acknowledged purchase lost, none sold twice.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
