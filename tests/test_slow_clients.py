"""Slow clients through real gunicorn: each pins one sync worker at most, and only for a while."""
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flashsale.routes import inputs
from support import open_socket, read_until_closed

GUNICORN_TIMEOUT = inputs.BODY_TIMEOUT_SECONDS + 3


def connect(server):
    return open_socket(server.url, timeout=GUNICORN_TIMEOUT + 10)


def dribble(sock, data, pause):
    """Send the data a byte at a time; stop when the server closes the connection."""
    try:
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(pause)
    except OSError:
        pass


def still_open(sock):
    """True while the server has neither answered on the connection nor closed it."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # an answer, or b"": closed
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def test_slow_clients_pin_only_their_own_workers_and_only_for_a_while(start_server, reset):
    reset(stock=100)
    server = start_server(WEB_CONCURRENCY="4", GUNICORN_CMD_ARGS=f"--timeout {GUNICORN_TIMEOUT}").wait_ready()
    body = b'{"item_id": 1, "user_id": "slow"}'
    head = (b"POST /buy_ticket HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    idle = connect(server)  # opened, never written to
    stalled = connect(server)  # the headers and half the body, then nothing
    stalled.sendall(head + body[:10])
    dribbler = connect(server)  # the headers, then the body a byte every half second
    dribbler.sendall(head)
    threading.Thread(target=dribble, args=(dribbler, body, 0.5), daemon=True).start()
    time.sleep(0.5)  # three of the four workers now wait on slow clients

    # The free worker serves buyers while the slow clients still hold theirs.
    answers = [server.buy(user_id=f"fast-{n}", timeout=GUNICORN_TIMEOUT).status_code for n in range(10)]
    assert answers == [201] * 10
    assert still_open(idle) and still_open(dribbler), "the fast buyers waited for the slow clients"

    # A body that stops arriving gets a 408 problem once a read waits BODY_TIMEOUT_SECONDS.
    answer = read_until_closed(stalled)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code": "request_timeout"' in answer

    # Clients that never finish their headers, or trickle their body, are cut off once gunicorn's
    # timeout passes, which frees their workers.
    for sock in (idle, dribbler):
        assert b"201" not in read_until_closed(sock)  # closed, not answered, before the socket's timeout
        sock.close()
    stalled.close()

    server.wait_ready()
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda n: server.buy(user_id=f"after-{n}").status_code, range(4)))
    assert parallel == [201] * 4
