"""Where a worker's CPU goes per answer, under wrk: `make profile` (docs/performance.md, Profile).

    python -m bench.cpu_profile                       # the ceiling, sold-out answers, purchases
    python -m bench.cpu_profile sold_out --revision f230b28 --verified
    python -m bench.cpu_profile --report              # the last run's figures again

For each kind of load (the HTTP ceiling's constant 409, sold-out answers, purchases of 1 hot
item) it starts gunicorn as bench.py does (this checkout's, or --revision's code exported with
`git archive`), warms it, loads it with wrk, and reads
- the workers' CPU per answer from /proc/<pid>/stat: user time (Python, psycopg's C, libc) and
  system time (the syscalls), in a run of its own;
- where one worker's user time goes, in a second run: py-spy samples it while it holds the GIL
  (running Python, not waiting on a socket), each sample goes to a part of PARTS by its stack,
  and the parts' shares are scaled to the user µs per answer;
- the syscalls per answer of another worker, counted by strace -c in a third, shorter run
  (strace slows the worker several times over, so only its counts are used).
The machine's load moves the µs by a fifth from one minute to the next; the shares move less.
"""
import argparse
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reset_db
from bench import bench
from flashsale import settings as configuration

ROOT = Path(__file__).resolve().parent.parent

TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_RATE = 250  # py-spy samples/s: more slows the sampled worker (it is paused per sample)
CONNECTIONS = 50
KINDS = {  # what is measured -> (WSGI app, units in stock)
    "ceiling": ("bench.ceiling_app:app", bench.AMPLE_STOCK),
    "sold_out": ("app:app", 0),
    "purchases": ("app:app", bench.AMPLE_STOCK),
}
# Parts of an answer, each a pattern on "function (package/file)" of a frame. A sample goes to the
# part of the innermost frame of its stack that matches one of the first group (the project's own
# work, whatever library it calls); failing that, of the innermost that matches the second group
# (the HTTP stack around the app).
APP_PARTS = [
    ("token check (auth.py, PyJWT)", r"\((auth\.py|jwt/)"),
    ("access log (observe.py)", r"^(text_access_line|json_access_line|BatchedLines\.|local_second|utc_)"),
    ("metrics (metrics.py, prometheus_client)", r"\((metrics\.py|prometheus_client/)"),
    ("database: db.py, psycopg, pool", r"\((db\.py|psycopg/|psycopg_pool/)"),
    ("JSON answer (routes/answers.py)", r"^(problem_response|json_response|json_answer|problem_answer|"
                                        r"unauthorized_answer|response|sold_out) \((routes/|answers)"),
    ("body: read, parse, validate", r"^(parse_purchase|parse_json_object|read_body|plain_length|check_\w+|"
                                    r"idempotency_key|whole_number|valid_\w+|reject_\w+) "),
    ("the view (routes/purchases.py)", r"\(routes/purchases\.py"),
]
STACK_PARTS = [
    ("POST /buy_ticket outside Flask (routes/fast_path.py)", r"\(routes/fast_path\.py"),
    ("request id, the middleware (observe.py)", r"\(observe\.py"),
    ("Flask/werkzeug: context, routing, Response", r"\((flask|werkzeug|blinker)/"),
    ("gunicorn: write the answer", r"^Response\.\w+ \(http/wsgi\.py"),
    ("gunicorn: make the environ", r"\(http/wsgi\.py"),
    ("gunicorn: read and parse the request", r"\(http/"),
    ("gunicorn: accept, close, worker loop", r"\((workers/|gunicorn/|socket\.py|problem_worker\.py)"),
]
PARTS = APP_PARTS + STACK_PARTS


def cpu_seconds(pids):
    """(user, system) CPU seconds of these processes so far."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / TICKS, system / TICKS


def export(revision):
    """(commit, LocalServer class) of the revision's files, exported once into bench/results/."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    folder = bench.BENCH / "results" / f"ab-{commit}"
    if not (folder / "app.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    # deploy/ holds it since the service moved into flashsale/; earlier revisions kept it at the top.
    runner = next(path for path in (folder / "deploy" / "local_server.py", folder / "local_server.py") if path.exists())
    spec = importlib.util.spec_from_file_location(f"local_server_{commit}", runner)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return commit, module.LocalServer


def server(workers, app="app:app", revision=None, verified=False, **env):
    """gunicorn on a loopback address of its own, as bench.py's, with these settings; in verified
    mode wrk sends bench.py's tokens (a crowd of bench.BUYERS, each verified once per worker)."""
    env["WEB_CONCURRENCY"] = str(workers)
    if verified:
        secret, tokens = bench.token_file()
        env.update({**bench.NO_AUTH, "AUTH_JWT_SECRET": secret, "AUTH_JWT_ALGORITHMS": "HS256"})
    made = (export(revision)[1] if revision else bench.LocalServer)(app, host=bench.fresh_host(), **env)
    if verified:
        made.wrk_args = (str(tokens),)
    return made


def py_spy():
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(found, os.X_OK):
        sys.exit("py-spy not found: `make profile` installs it (requirements-dev.txt)")
    return found


def load(server, seconds, pids):
    """wrk for `seconds`; (answers, statuses, user µs per answer, system µs per answer)."""
    before = cpu_seconds(pids)
    result = bench.wrk(f"{server.url}/buy_ticket", seconds, CONNECTIONS, extra=getattr(server, "wrk_args", ()))
    after = cpu_seconds(pids)
    answers = result["requests"]
    return (answers, result["statuses"], result["per_second"],
            *((a - b) * 1e6 / answers for a, b in zip(after, before)))


def samples(path):
    """py-spy's raw output: [(frames from the root, count)]."""
    stacks = []
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append(([re.sub(r":\d+\)$", ")", frame).replace(f"{ROOT}/", "") for frame in stack.split(";")],
                           int(count)))
    return stacks


def short(frame):
    """"function (file)" with the file's path cut to the package and file name."""
    name, _, file = frame.partition(" (")
    parts = file.rstrip(")").split("/")
    package = len(parts) > 1 and parts[-2] != "site-packages" and not parts[-2].startswith("python3")
    keep = parts[-2:] if package else parts[-1:]
    return f"{name} ({'/'.join(keep)})"


def parts(stacks):
    """Samples per part of PARTS (and "other"), and the functions with the most samples of their own."""
    groups = [[(name, re.compile(pattern)) for name, pattern in group] for group in (APP_PARTS, STACK_PARTS)]
    counts, own = collections.Counter(), collections.Counter()
    for frames, count in stacks:
        if not any("SyncWorker.handle" in frame for frame in frames):
            continue  # the worker's loop waiting for a connection, or another thread
        names = [short(frame) for frame in frames]
        part = next((name for group in groups for frame in reversed(names)
                     for name, rule in group if rule.search(frame)), "other")
        counts[part] += count
        own[names[-1]] += count
    return counts, own


def syscalls(server, seconds, pid):
    """Syscalls per answer of worker `pid`, by name, from strace -c while wrk loads the server;
    the answers are its shutdown() calls, one per connection (gunicorn's close_graceful)."""
    if not shutil.which("strace"):
        return None
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out.name, "-p", str(pid)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        bench.wrk(f"{server.url}/buy_ticket", seconds, CONNECTIONS, extra=getattr(server, "wrk_args", ()))
        tracer.terminate()
        tracer.wait()
        table = Path(out.name).read_text()
    calls = {}
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    answers = calls.get("shutdown") or 1
    return {name: n / answers for name, n in sorted(calls.items(), key=lambda kv: -kv[1])}


def profile(kind, seconds, database_url, workers, revision, verified):
    app, stock = KINDS[kind]
    with server(workers, app, revision, verified and kind != "ceiling") as running:
        reset_db.reset(stock=bench.AMPLE_STOCK, max_per_user=bench.AMPLE_STOCK, database_url=database_url)
        bench.warm_up(f"{running.url}/buy_ticket", extra=getattr(running, "wrk_args", ()))
        reset_db.reset(stock=stock, max_per_user=bench.AMPLE_STOCK, database_url=database_url)
        pids = running.worker_pids()
        bench.wrk(f"{running.url}/buy_ticket", 1, CONNECTIONS, extra=getattr(running, "wrk_args", ()))
        plain = load(running, seconds, pids)  # without py-spy: the CPU per answer
        with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
            spy = subprocess.Popen([py_spy(), "record", "--gil", "-r", str(SAMPLE_RATE), "-d", str(seconds + 1),
                                    "-f", "raw", "-o", raw.name, "-p", str(pids[0])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            load(running, seconds, pids)
            if spy.wait() != 0:
                sys.exit(f"py-spy failed: {spy.stderr.read()}")
            stacks = samples(raw.name)
        calls = syscalls(running, 2, pids[1])
    return {"answers": plain[0], "statuses": plain[1], "per_second": plain[2], "user_us": plain[3],
            "system_us": plain[4], "stacks": stacks, "syscalls": calls}


def report(kind, measured, top):
    counts, own = parts(measured["stacks"])
    total = sum(counts.values()) or 1
    user = measured["user_us"]
    print(f"\n== {kind}: {measured['per_second']:.0f} answers/s {measured['statuses']}; per answer, all "
          f"workers: {user + measured['system_us']:.0f} µs CPU = {user:.0f} user + {measured['system_us']:.0f} system")
    print(f"{'part of the answer (one worker, py-spy --gil)':<54} {'share':>6} {'user µs':>8}")
    for name, _ in PARTS + [("other", "")]:
        if counts[name]:
            print(f"{name:<54} {counts[name] / total:>6.1%} {counts[name] / total * user:>8.0f}")
    print(f"top functions by own samples ({total} samples):")
    for name, count in own.most_common(top):
        print(f"  {count / total:>6.1%}  {name}")
    if measured["syscalls"]:
        print("syscalls per answer (strace -c, one worker): "
              + ", ".join(f"{name} {n:.1f}" for name, n in measured["syscalls"].items() if n >= 0.05))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kinds", nargs="*", choices=list(KINDS) + [[]], help="default: all three")
    parser.add_argument("--seconds", type=int, default=10, help="length of each load (default 10)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--revision", help="profile this revision's code (git archive) instead of the checkout's")
    parser.add_argument("--verified", action="store_true", help="verified mode: a token per buyer (bench.py's)")
    parser.add_argument("--top", type=int, default=15, help="functions listed by their own samples")
    parser.add_argument("--output", default=str(bench.BENCH / "results" / "profile.json"))
    parser.add_argument("--report", action="store_true", help="report the last run's --output again, measure nothing")
    options = parser.parse_args()
    output = Path(options.output)
    if options.report:
        measured = json.loads(output.read_text())
    else:
        database_url = configuration.load_or_exit().database_url
        measured = {kind: profile(kind, options.seconds, database_url, options.workers, options.revision,
                                  options.verified) for kind in options.kinds or list(KINDS)}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(measured) + "\n")
    for kind, figures in measured.items():
        report(kind, figures, options.top)


if __name__ == "__main__":
    main()
