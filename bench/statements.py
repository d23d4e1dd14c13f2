"""Purchase statements alone in pgbench, on one hot row, interleaved: what a statement costs behind
the item's row lock, without HTTP or Python (docs/performance.md, What the holds cost purchases).

    python -m bench.statements f815516:queries/buy_ticket.sql queries/buy_ticket.sql
    python -m bench.statements queries/buy_ticket.sql queries/buy_held_ticket.sql@held

Each statement (a file, or REVISION:PATH read with `git show`) runs as pgbench's transaction,
BEGIN; the statement; END;, for a new buyer and idempotency key each time (a random number),
on item 1, sold at once, or with `@held` after it on item 2, whose purchases are holds of an hour.
The first statement is the base: the others run in turn after it, base first and last, and each
run is divided by the mean of the base runs around it; the median of those ratios is printed
with the lowest and highest.

With --perf, each statement instead runs once while `perf record -g` samples its backends (root
and perf needed), and the output is the backends' CPU per transaction, in all and in the
PostgreSQL functions that show what a statement costs behind the row lock (EvalPlanQual's
rebuild of the plan's subplans above all; docs/performance.md).
"""
import argparse
import collections
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import db
from bench import bench
from flashsale import settings as configuration

ROOT = Path(__file__).resolve().parent.parent

# A new buyer and key for each transaction: pgbench's variables are sent as parameters, as the
# service's are (a function call in their place would keep the planner from the indexes).
PARAMETERS = {"item_id": ":item_id", "user_id": ":buyer", "quantity": "1", "idempotency_key": ":buyer"}


def statement_text(spec, folder):
    """The statement of a file, or of REVISION:PATH, as db.query() sends it."""
    path = Path(spec).resolve()
    if ":" in spec:
        path = Path(folder) / f"revision-{len(list(Path(folder).iterdir()))}.sql"
        path.write_text(subprocess.run(["git", "-C", str(ROOT), "show", spec], capture_output=True, text=True,
                                       check=True).stdout)
    return db.query(path.stem, path.parent)


def pgbench_script(spec, folder):
    """A pgbench script file running the statement of `spec` on its item."""
    spec, held = spec.removesuffix("@held"), spec.endswith("@held")
    item_id = bench.HELD_ITEM if held else 1
    statement = re.sub(r"%\((\w+)\)s", lambda match: PARAMETERS[match.group(1)], statement_text(spec, folder))
    path = Path(folder) / f"{len(list(Path(folder).iterdir()))}.pgbench"
    path.write_text(f"\\set item_id {item_id}\n\\set buyer random(1, 9000000000000000)\nBEGIN;\n{statement};\nEND;\n")
    return path


def pgbench_command(database_url, script, seconds, clients):
    return [str(bench.PGBIN / "pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", "2",
            "-T", str(seconds), "-f", str(script), database_url]


def transactions_per_second(output):
    return float(next(line for line in output.splitlines() if line.startswith("tps =")).split()[2])


def pgbench(database_url, script, seconds, clients):
    bench.announce(f"pgbench {script.name}", seconds, 0)
    output = subprocess.run(pgbench_command(database_url, script, seconds, clients), capture_output=True,
                            text=True, check=True).stdout
    return {"per_second": transactions_per_second(output)}


# Functions of the PostgreSQL backend whose share of the samples --perf prints: a sample counts
# for each of them on its stack.
PROFILED = ("EvalPlanQualBegin", "EvalPlanQual", "ExecInitModifyTable", "standard_ExecutorStart",
            "standard_ExecutorEnd", "heap_lock_tuple", "XLogFlush")
PERF_HZ = 4000


def stacks(perf_data):
    """The function names of each sample's stack in a perf.data file."""
    output = subprocess.run(["perf", "script", "-i", perf_data, "-F", "ip,sym"], capture_output=True,
                            text=True, check=True).stdout
    return [{line.split()[-1] for line in sample.splitlines() if line.strip()} for sample in output.split("\n\n")]


def profile(database_url, spec, script, seconds, clients, folder):
    """Backend CPU µs per transaction of one pgbench run: in all, and under each PROFILED function."""
    perf_data = f"{folder}/perf.data"
    command = pgbench_command(database_url, script, seconds + 2, clients)
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as load:
        time.sleep(1)
        with db.connect(database_url) as conn:
            pids = [row["pid"] for row in conn.execute(db.query("pgbench_backends", ROOT / "bench"))]
        subprocess.run(["perf", "record", "-q", "-F", str(PERF_HZ), "-g", "-o", perf_data,
                        "-p", ",".join(map(str, pids)), "--", "sleep", str(seconds)], check=True)
        tps = transactions_per_second(load.communicate()[0])
    samples = stacks(perf_data)
    counts = collections.Counter(name for sample in samples for name in PROFILED if name in sample)
    per_transaction = 1e6 / PERF_HZ / (tps * seconds)
    print(f"{spec}: {tps:.0f} transactions/s, backend CPU µs per transaction {len(samples) * per_transaction:.0f}; "
          + ", ".join(f"{name} {counts[name] * per_transaction:.0f}" for name in PROFILED), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("statements", nargs="+", help="files or REVISION:PATH, each with @held for the held item; the first is the base")
    parser.add_argument("--seconds", type=int, default=5, help="length of each run (default 5)")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each statement (default 7)")
    parser.add_argument("--clients", type=int, default=3, help="pgbench clients (default 3, as workers)")
    parser.add_argument("--perf", action="store_true", help="the backends' CPU per transaction, from perf")
    options = parser.parse_args()
    database_url = configuration.load_or_exit().database_url
    bench.sale_with_a_held_item(database_url, bench.AMPLE_STOCK)
    with tempfile.TemporaryDirectory() as folder:
        base, *others = [pgbench_script(spec, folder) for spec in options.statements]
        if options.perf:
            for spec, script in zip(options.statements, [base, *others]):
                profile(database_url, spec, script, options.seconds, options.clients, folder)
            return
        for spec, script in zip(options.statements[1:], others):
            _, measured = bench.interleaved(lambda: pgbench(database_url, base, options.seconds, options.clients),
                                            lambda: pgbench(database_url, script, options.seconds, options.clients),
                                            options.rounds)
            ratios = measured["ratios"]
            print(f"{spec} / {options.statements[0]}, {options.clients} clients, transactions/s: "
                  f"{statistics.median(ratios):.3f} (from {min(ratios):.3f} to {max(ratios):.3f}, "
                  f"{options.rounds} rounds)", flush=True)


if __name__ == "__main__":
    main()
