"""This checkout against another revision, interleaved on warm servers, as bench.py's feature rows.

    python -m bench.ab --base main                  # sold-out answers and purchases, 15 rounds
    python -m bench.ab --base f230b28 --env ACCESS_LOG=1 sold_out
    python -m bench.ab --base f230b28 --this 05a313a purchases   # two revisions, neither checked out

Both servers start once and stay up: the base revision's code (exported with `git archive` into
bench/results/) and this checkout's (or --this revision's), each on a loopback address of its
own. wrk loads them in turn, base first and last (base, this, base, ...); each run of this
checkout is divided by the mean of the base runs around it, and the median of those ratios is
reported with the lowest and the highest, and the median CPU per answer of each (user + system
of all the workers, from /proc).
"""
import argparse

import reset_db
from bench import bench
from bench.cpu_profile import cpu_seconds, export, server
from flashsale import settings as configuration

KINDS = {"sold_out": 0, "purchases": bench.AMPLE_STOCK}


def run(running, seconds, what):
    """One wrk load: answers/s, and the workers' CPU µs per answer."""
    bench.announce(what, seconds, bench.LOAD_GAP_SECONDS)
    pids = running.worker_pids()
    before = sum(cpu_seconds(pids))
    result = bench.wrk(f"{running.url}/buy_ticket", seconds, 50, extra=getattr(running, "wrk_args", ()))
    result["cpu_us"] = (sum(cpu_seconds(pids)) - before) * 1e6 / max(result["requests"], 1)
    return result


def median(values):
    return sorted(values)[len(values) // 2]


def compare(database_url, base, this, kind, seconds, rounds):
    reset_db.reset(stock=bench.AMPLE_STOCK, max_per_user=bench.AMPLE_STOCK, database_url=database_url)
    for running in base, this:
        bench.warm_up(f"{running.url}/buy_ticket", extra=getattr(running, "wrk_args", ()))
    reset_db.reset(stock=KINDS[kind], max_per_user=bench.AMPLE_STOCK, database_url=database_url)
    runs = {"base": [], "this": []}

    def measure(name, running):
        runs[name].append(run(running, seconds, f"{name}, {kind}"))
        return runs[name][-1]

    _, measured = bench.interleaved(lambda: measure("base", base), lambda: measure("this", this), rounds)
    ratios = measured["ratios"]
    cpu = {name: median([r["cpu_us"] for r in done]) for name, done in runs.items()}
    rates = {name: median([r["per_second"] for r in done]) for name, done in runs.items()}
    print(f"{kind}: this/base answers/s {median(ratios):.3f} (from {min(ratios):.3f} to {max(ratios):.3f}, "
          f"{rounds} rounds); median answers/s base {rates['base']:.0f}, this {rates['this']:.0f}; "
          f"median CPU µs per answer base {cpu['base']:.0f}, this {cpu['this']:.0f} "
          f"({cpu['this'] / cpu['base']:.3f}); answers {measured['statuses']}", flush=True)
    return {"ratios": ratios, "cpu_us": cpu, "per_second": rates}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kinds", nargs="*", choices=list(KINDS) + [[]])
    parser.add_argument("--base", default="main", help="the revision to compare with (default main)")
    parser.add_argument("--this", help="a revision to measure instead of the checkout's files")
    parser.add_argument("--seconds", type=int, default=3, help="length of each run (default 3)")
    parser.add_argument("--rounds", type=int, default=15, help="runs of this checkout (default 15)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--verified", action="store_true",
                        help="both in verified mode, wrk sending bench.py's tokens (a crowd of 1000 buyers)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for both servers, e.g. ACCESS_LOG=1 (repeatable)")
    options = parser.parse_args()
    env = dict(item.split("=", 1) for item in options.env)
    database_url = configuration.load_or_exit().database_url
    print(f"base {export(options.base)[0]} against {export(options.this)[0] if options.this else 'this checkout'}, "
          f"{options.workers} workers, {'verified mode, ' if options.verified else ''}{env or 'default settings'}")
    base = server(options.workers, revision=options.base, verified=options.verified, **env)
    this = server(options.workers, revision=options.this, verified=options.verified, **env)
    with base, this:
        for kind in options.kinds or list(KINDS):
            compare(database_url, base, this, kind, options.seconds, options.rounds)


if __name__ == "__main__":
    main()
