"""nginx in front of gunicorn: renders deploy/nginx.conf.template and runs nginx from a folder.

    python -m deploy.nginx serve     # gunicorn on a unix socket, nginx on API_URL; Ctrl-C stops both
    python -m deploy.nginx render --folder DIR --listen 0.0.0.0:80 [--upstream unix:/run/x.sock]

From Python (tests, bench, a cluster): render(...) gives the configuration, Nginx(...) runs it as
a subprocess, and GunicornBehindNginx(...) is a LocalServer whose clients go through nginx.
"""
import argparse
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from deploy.local_server import ROOT, LocalServer, free_address

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
LOOPBACK = ("127.0.0.0/8", "::1")
# Longer than gunicorn's worker timeout (30 s), which ends a stuck request first, plus the time
# a request may wait in gunicorn's backlog for a free worker.
UPSTREAM_TIMEOUT_SECONDS = 60
START_WAIT_SECONDS = 10
STOP_WAIT_SECONDS = 10
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def worker_user():
    """Whom nginx's workers run as when nginx starts as root, as "user group": www-data where it
    exists (Debian), else nobody. None when not root: the workers are then this user."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return f"{user.pw_name} {grp.getgrgid(user.pw_gid).gr_name}"
    return None


def render(upstreams, listen, folder, rate_limit=0, metrics_allow=LOOPBACK, user=None,
           upstream_timeout=UPSTREAM_TIMEOUT_SECONDS, error_log=None, access_log=None):
    """The configuration: nginx on `listen` (host:port), passing to `upstreams` (each an nginx
    `server` argument: "unix:/run/flashsale.sock", "127.0.0.1:8001 backup", ...), with its pid,
    logs and temporary files in `folder`. `rate_limit`: requests/s per client address, 0 for none.
    `metrics_allow`: the networks that may read /metrics. `user`: the workers' "user group" when
    started as root (worker_user()). `error_log`: FOLDER/error.log unless given ("stderr", a
    path). `access_log`: off unless given (a path), as gunicorn's."""
    folder = Path(folder).resolve()
    if not upstreams:
        raise ValueError("at least one upstream is needed")
    if rate_limit:
        zone = f"limit_req_zone $binary_remote_addr zone=per_client:10m rate={int(rate_limit)}r/s;"
        # A second's worth of requests at once, then the rate.
        limit = f"limit_req zone=per_client burst={int(rate_limit)} nodelay;"
    else:
        zone = limit = "# no per-client rate limit (NGINX_RATE_LIMIT=0)"
    values = {
        "user": f"user {user};" if user else "# the workers run as the user who started nginx",
        "folder": str(folder),
        "error_log": error_log or str(folder / "error.log"),
        "access_log": access_log or "off",
        "rate_limit_zone": zone,
        "rate_limit": limit,
        "metrics_allow": "\n".join(f"        {network} 1;" for network in metrics_allow),
        "upstreams": "\n".join(f"        server {upstream};" for upstream in upstreams),
        "listen": listen,
        "upstream_timeout": str(int(upstream_timeout)),
    }

    def fill(match):
        return values[match.group(1)]

    return re.sub(r"\{\{(\w+)\}\}", fill, TEMPLATE.read_text())


def make_folder(folder=None):
    """A folder for nginx's files (a new one in /tmp unless given). As root, the workers' user
    may enter it, through its group, and nobody else: the gunicorn socket inside is safe there."""
    folder = Path(folder or tempfile.mkdtemp(prefix="flashsale-nginx-"))
    folder.mkdir(parents=True, exist_ok=True)
    user = worker_user()
    if user is not None:
        shutil.chown(folder, group=user.split()[1])
        folder.chmod(0o750)
    return folder


def nginx_binary():
    found = shutil.which("nginx", path=SEARCH_PATH)
    if found is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx; `make serve` does it)")
    return found


def accepts(address):
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
        return True
    except OSError:
        return False


class Nginx:
    """nginx running `render(upstreams, listen, folder, **options)` in the foreground, as a
    subprocess in a session of its own; stop() stops it and its workers. Without `listen`, a
    free port of `host`; without `folder`, a new folder in /tmp, removed by stop()."""

    def __init__(self, upstreams, listen=None, folder=None, host="127.0.0.1", **options):
        self.own_folder = folder is None
        self.folder = make_folder(folder)
        self.listen = listen or free_address(host)
        self.url = f"http://{self.listen}"
        self.config = self.folder / "nginx.conf"
        self.config.write_text(render(upstreams, self.listen, self.folder, user=worker_user(), **options))
        self.log = open(self.folder / "nginx.out", "wb")
        to_terminal = options.get("error_log") == "stderr"
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(self.folder), "-c", str(self.config), "-g", "daemon off;"],
            stdout=None if to_terminal else self.log, stderr=None if to_terminal else subprocess.STDOUT,
            start_new_session=True)

    def __enter__(self):
        try:
            return self.wait_listening()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def output(self):
        return "".join(path.read_text(errors="replace") for path in
                       (self.folder / "nginx.out", self.folder / "error.log") if path.exists())

    def wait_listening(self, seconds=START_WAIT_SECONDS):
        """Wait until nginx accepts connections; raise with its output if it exits or never does."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.process.poll() is None:
            if accepts(self.listen):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not start on {self.listen}:\n{self.output()}")

    def stop(self):
        """Fast shutdown (SIGTERM to the master); its process group is killed if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        if self.own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class GunicornBehindNginx(LocalServer):
    """A LocalServer whose gunicorn listens on a unix socket in nginx's folder, and whose `url`
    is nginx's, on a free port of `host`. `nginx_options` go to render() (rate_limit=...)."""

    def __init__(self, app="app:app", host="127.0.0.1", nginx_options=None, **env):
        folder = make_folder()
        self.socket = folder / "gunicorn.sock"
        super().__init__(app, host, bind=f"unix:{self.socket}", **env)
        try:
            self.nginx = Nginx([f"unix:{self.socket}"], folder=folder, host=host, **(nginx_options or {}))
        except BaseException:
            super().stop()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.nginx.own_folder = True  # removed with nginx
        self.url = self.nginx.url

    def output(self):
        return f"{super().output()}\n--- nginx ---\n{self.nginx.output()}"

    def wait_ready(self, seconds=30):
        self.nginx.wait_listening()
        return super().wait_ready(seconds)

    def stop(self):
        super().stop()
        self.nginx.stop()


def stop_serving(number, frame):
    raise KeyboardInterrupt  # serve() stops gunicorn and nginx


def serve(settings):
    """gunicorn on a unix socket (BIND when it names one, else one in nginx's folder) and nginx on
    API_URL's address, both in the foreground; returns when either stops, having stopped both."""
    address = urlsplit(settings.api_url)
    listen = f"{address.hostname}:{address.port or 80}"
    folder = make_folder()
    bind = settings.bind if settings.bind.startswith("unix:") else f"unix:{folder / 'gunicorn.sock'}"
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", bind], cwd=ROOT)
    nginx = None
    try:
        nginx = Nginx([bind], listen=listen, folder=folder, rate_limit=settings.nginx_rate_limit,
                      error_log="stderr", access_log="off")
        nginx.own_folder = True
        nginx.wait_listening()
        limit = f"{settings.nginx_rate_limit}/s per client" if settings.nginx_rate_limit else "off"
        print(f"nginx on {settings.api_url} -> gunicorn on {bind} (rate limit {limit}); "
              f"configuration in {nginx.config}; Ctrl-C stops both", flush=True)
        while gunicorn.poll() is None and nginx.process.poll() is None:
            time.sleep(0.5)
        print("gunicorn stopped" if gunicorn.poll() is not None else "nginx stopped", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        # gunicorn first: it removes its socket from the folder that nginx.stop() removes.
        if gunicorn.poll() is None:
            gunicorn.terminate()
        gunicorn.wait()
        if nginx is not None:
            nginx.stop()
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
    from flashsale import settings as configuration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="gunicorn and nginx in the foreground, on API_URL (make serve)")
    write = commands.add_parser("render", help="write FOLDER/nginx.conf for a production nginx")
    write.add_argument("--folder", required=True, help="nginx's folder: configuration, pid, logs, temporary files")
    write.add_argument("--listen", required=True, help="host:port nginx listens on, e.g. 0.0.0.0:80")
    write.add_argument("--upstream", action="append",
                       help="an nginx `server` argument for gunicorn (default: BIND, which must be unix:PATH)")
    options = parser.parse_args(argv)
    settings = configuration.load_or_exit()
    if options.command == "serve":
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # even if inherited as ignored
            signal.signal(number, stop_serving)
        return serve(settings)
    upstreams = options.upstream or [settings.bind]
    if not options.upstream and not settings.bind.startswith("unix:"):
        parser.error(f"give --upstream, or set BIND=unix:PATH (BIND is {settings.bind})")
    folder = make_folder(options.folder).resolve()
    config = folder / "nginx.conf"
    config.write_text(render(upstreams, options.listen, folder, rate_limit=settings.nginx_rate_limit,
                             user=worker_user()))
    print(f"wrote {config}; run: nginx -p {folder} -c {config} -g 'daemon off;'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
