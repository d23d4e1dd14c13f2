"""A real gunicorn of this project on a local port, for the tests, the benchmark and the chaos runs.

`python -m deploy.local_server COMMAND ...` starts one on a free port, runs COMMAND with API_URL pointing
at it, stops it, and exits with COMMAND's status: `make run` runs the proof this way."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent  # where gunicorn.conf.py is
READY_WAIT_SECONDS = 30
STOP_WAIT_SECONDS = 15


def wait_until_ready(url, seconds, process=None, path="/readyz"):
    """True once the service at `url` answers `path` with 200; False after `seconds`, or as soon
    as its gunicorn `process`, when given, has exited."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            if requests.get(f"{url}{path}", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


def free_address(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return f"{host}:{sock.getsockname()[1]}"


class LocalServer:
    """gunicorn with gunicorn.conf.py serving `app`; `env` overrides the environment (WEB_CONCURRENCY...).
    `bind` (unix:PATH) replaces the free port, for a proxy in front to set `url` (deploy/nginx.py)."""

    def __init__(self, app="app:app", host="127.0.0.1", bind=None, **env):
        address = free_address(host)
        self.url = f"http://{address}"
        self.log = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)
        self.final_output = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", bind or address, app],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def __enter__(self):
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise

    def __exit__(self, *exc):
        self.stop()

    def output(self):
        """What gunicorn printed so far; once stopped, all it printed, its workers' last log
        lines included (they write in batches, observe.py)."""
        if self.final_output is not None:
            return self.final_output
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, seconds=None):
        """Wait until /readyz answers 200; raise with gunicorn's output if it never does."""
        seconds = seconds or READY_WAIT_SECONDS
        if not wait_until_ready(self.url, seconds, self.process):
            status = self.process.poll()
            why = f"exited with status {status}" if status is not None else f"was not ready within {seconds} s"
            raise RuntimeError(f"gunicorn {why}:\n{self.output()}")
        return self

    def worker_pids(self):
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        if os.path.exists(self.log.name):
            self.final_output = self.output()
            os.unlink(self.log.name)

    def buy(self, item_id=1, user_id="alice", quantity=1, key=None, timeout=15):
        headers = {"Idempotency-Key": key} if key else {}
        return requests.post(f"{self.url}/buy_ticket", timeout=timeout, headers=headers,
                             json={"item_id": item_id, "user_id": user_id, "quantity": quantity})


def main(command):
    from flashsale import settings as configuration

    configuration.load_or_exit()  # a bad setting is said at once, before anything starts
    try:
        with LocalServer() as server:
            return subprocess.run(command, env={**os.environ, "API_URL": server.url}).returncode
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m deploy.local_server COMMAND [ARGUMENT ...]")
    sys.exit(main(sys.argv[1:]))
