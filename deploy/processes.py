"""Processes of the local cluster: finding a process's whole tree, stopping, freezing and killing
it, waiting with a bound, and free ports."""
import os
import signal
import socket
import time
from pathlib import Path


class ClusterError(Exception):
    """The cluster could not be brought to the state asked for."""


def alive(pid):
    """True while process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def process_tree(pid):
    """`pid` and all its descendants, while they run."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if alive(current):
            tree.append(current)
            todo.extend(children.get(current, []))
    return tree


def signal_all(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def kill_tree(pid):
    """SIGKILL a process and every descendant at once. They are stopped first, so that none forks
    a new child, or is orphaned out of the tree, between the listing and the kill. Returns the pids."""
    stopped = set()
    for _ in range(10):  # a fork in flight may add a child after a listing; list until none is new
        new = set(process_tree(pid)) - stopped
        if not new:
            break
        signal_all(new, signal.SIGSTOP)
        stopped |= new
    signal_all(stopped, signal.SIGKILL)
    return sorted(stopped)


def wait_gone(pids, seconds):
    """True once no process of `pids` runs; False after `seconds`."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for(what, check, seconds, interval=0.2):
    """Call `check` until it returns something true, and return that; ClusterError after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not within {seconds:.0f} s")
        time.sleep(interval)


def free_ports(count, host="127.0.0.1"):
    """`count` distinct free ports: every socket is held until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
