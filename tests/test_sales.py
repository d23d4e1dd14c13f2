"""`flask --app app sale ...` in real subprocesses against the test database, alone and while a
burst of buyers is served by real gunicorn."""
import csv
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from flashsale import cli
from support import (FLASK, ROOT, burst_around, flask_command, item, purchases, restock_held,
                     run_test_query, wait_for_waiting_buyers)

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def sale(*args, **env):
    return flask_command("sale", *args, **env)


def created(*args):
    result = sale("create", *args)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def iso(moment):
    return moment.isoformat()


def table(stdout):
    """`sale list`'s rows by id: {id: {column: value}}. Columns are apart by two spaces or more;
    a cell (a window, "sold out") has single spaces at most."""
    header, *lines = stdout.splitlines()
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        values = dict(zip(header.split(), cells))
        rows[int(values["id"])] = values
    return rows


def test_create_a_sale_with_a_limit_and_a_window_then_buy_from_it(reset, conn, server):
    reset(stock=1)
    now = datetime.now(timezone.utc)
    starts = now - timedelta(minutes=1)
    ends = (now + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2)))  # any zone will do
    item_id = created("--name", "Concert, row A", "--stock", "5", "--max-per-user", "2",
                      "--starts-at", iso(starts), "--ends-at", iso(ends))
    assert item_id == 2
    row = item(conn, item_id)
    assert (row["name"], row["stock"], row["remaining"], row["max_per_user"]) == ("Concert, row A", 5, 5, 2)
    assert (row["sale_starts_at"], row["sale_ends_at"]) == (starts, ends)
    assert server.buy(item_id, "alice", quantity=2).status_code == 201
    limited = server.buy(item_id, "alice")
    assert limited.status_code == 409 and limited.json()["code"] == "limit_reached"


def test_a_scheduled_sale_refuses_buyers_until_it_opens(reset, server):
    reset(stock=1)
    item_id = created("--name", "Later", "--stock", "3",
                      "--starts-at", iso(datetime.now(timezone.utc) + timedelta(hours=1)))
    answer = server.buy(item_id, "alice")
    assert answer.status_code == 409 and answer.json()["code"] == "sale_not_started"


def one_line_error(result):
    """The answer to bad input: exit status 2, one line on stderr, no traceback, nothing on stdout."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize("args, message", [
    (["create", "--stock", "5"], "flask sale create: Missing option '--name'."),
    (["create", "--name", "X"], "Missing option '--stock'."),
    (["create", "--name", "X", "--stock", "0"], "Invalid value for '--stock': 0 is not in the range"),
    (["create", "--name", "X", "--stock", "five"], "'five' is not a valid integer"),
    (["create", "--name", "X", "--stock", "1.5"], "'1.5' is not a valid integer"),
    (["create", "--name", "X", "--stock", "2147483648"], "is not in the range 1<=x<=2147483647"),
    (["create", "--name", "X", "--stock", "5", "--max-per-user", "-1"], "Invalid value for '--max-per-user'"),
    (["create", "--name", "  ", "--stock", "5"], "--name must be 1 to 200 characters"),
    (["create", "--name", "X", "--stock", "5", "--starts-at", "2030-01-01T10:00:00"],
     "'2030-01-01T10:00:00' has no time zone: add one, e.g. 2030-01-01T10:00:00Z"),
    (["create", "--name", "X", "--stock", "5", "--ends-at", "2030-01-01"], "has no time zone"),
    (["create", "--name", "X", "--stock", "5", "--starts-at", "tomorrow"], "'tomorrow' is not an ISO-8601 time"),
    (["create", "--name", "X", "--stock", "5", "--starts-at", "2030-01-01T10:00Z",
      "--ends-at", "2030-01-01T10:00Z"], "--ends-at must come after --starts-at"),
    (["create", "--name", "X", "--stock", "5", "--starts-at", "2030-01-01T10:00+00:00",
      "--ends-at", "2030-01-01T11:00+02:00"], "--ends-at must come after --starts-at"),
    (["create", "--name", "X", "--stock", "5", "--ends-at", "2020-01-01T00:00Z"], "--ends-at is in the past"),
    (["show", "999"], "flask sale show: there is no item 999"),
    (["show", "0"], "Invalid value for 'ID'"),
    (["show", "abc"], "'abc' is not a valid integer"),
    (["end", "999"], "flask sale end: there is no item 999"),
    (["restock", "999", "5"], "flask sale restock: there is no item 999"),
    (["restock", "1", "0"], "Invalid value for 'N'"),
    (["restock", "1"], "Missing argument 'N'"),
    (["restock", "1", "2147483647"], "flask sale restock: item 1's stock would exceed 2147483647"),
    (["export", "999"], "flask sale export: there is no item 999"),
    (["refund", "1"], "No such command 'refund'"),
    (["list", "--all"], "No such option '--all'"),
])
def test_bad_input_is_one_line_and_changes_nothing(reset, conn, args, message):
    reset(stock=10)
    before = run_test_query(conn, "list_items_raw")
    assert message in one_line_error(sale(*args))
    assert run_test_query(conn, "list_items_raw") == before


@pytest.mark.parametrize("args", [["list"], ["show", "1"], ["create", "--name", "X", "--stock", "1"],
                                  ["end", "1"], ["restock", "1", "1"], ["export", "1"]])
def test_an_unreachable_database_is_one_line(args):
    line = one_line_error(sale(*args, DATABASE_URL=UNREACHABLE))
    assert line.startswith(f"flask sale {args[0]}: cannot reach the database: ")


def test_db_upgrade_on_an_unreachable_database_is_one_line():
    line = one_line_error(flask_command("db", "upgrade", DATABASE_URL=UNREACHABLE))
    assert line.startswith("flask db upgrade: cannot reach the database: ")


def test_every_command_has_help():
    """Every command of the real groups, so that a new one cannot go without its help."""
    for group in (cli.sale_group, cli.db_group):
        for command in group.commands:
            result = flask_command(group.name, command, "--help")
            assert result.returncode == 0 and result.stdout.startswith(f"Usage: flask {group.name} {command}")


def test_list_shows_each_sale_with_its_state(reset, server):
    reset(stock=2)  # item 1
    now = datetime.now(timezone.utc)
    scheduled = created("--name", "Scheduled", "--stock", "4", "--starts-at", iso(now + timedelta(days=1)))
    ended = created("--name", "Ended", "--stock", "4", "--ends-at", iso(now + timedelta(days=1)))
    open_ = created("--name", "Open", "--stock", "4")
    for user in ["alice", "bob"]:
        assert server.buy(1, user).status_code == 201  # item 1 sells out
    assert server.buy(open_, "alice").status_code == 201
    assert server.buy(open_, "alice").status_code == 201
    assert server.buy(open_, "bob").status_code == 201
    assert sale("end", ended).returncode == 0

    result = sale("list")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == ["id", "name", "stock", "sold", "held", "remaining", "buyers", "window", "payment", "price",
                      "revenue", "state"]
    rows = table(result.stdout)
    assert rows[1]["state"] == "sold out" and (rows[1]["sold"], rows[1]["remaining"], rows[1]["buyers"]) == ("2", "0", "2")
    assert rows[scheduled]["state"] == "scheduled" and rows[scheduled]["window"].startswith("from ")
    assert rows[ended]["state"] == "ended"
    assert rows[open_]["state"] == "open"
    assert (rows[open_]["stock"], rows[open_]["sold"], rows[open_]["remaining"], rows[open_]["buyers"]) \
        == ("4", "3", "1", "2")


def test_show_gives_the_first_and_last_sale_and_the_time_to_sell_out(reset, conn, server):
    reset(stock=3)
    for user in ["alice", "bob", "carol"]:
        assert server.buy(1, user).status_code == 201
    result = sale("show", "1")
    assert result.returncode == 0, result.stderr
    shown = dict(line.split(":", 1) for line in result.stdout.splitlines())
    shown = {key: value.strip() for key, value in shown.items()}
    assert (shown["state"], shown["sold"], shown["remaining"], shown["buyers"]) == ("sold out", "3", "0", "3")
    times = [datetime.fromisoformat(shown[key].replace("Z", "+00:00")) for key in ("first sale", "last sale")]
    assert times[0] < times[1]
    assert shown["sold out in"] == f"{(times[1] - times[0]).total_seconds():.3f} s"
    assert sale("restock", "1", "2").returncode == 0
    assert "sold out in:  -" in sale("show", "1").stdout


def test_ending_a_scheduled_sale_closes_it_before_it_opens(reset, conn, server):
    reset(stock=1)
    item_id = created("--name", "Never", "--stock", "3",
                      "--starts-at", iso(datetime.now(timezone.utc) + timedelta(hours=1)))
    ended = sale("end", item_id)
    assert ended.returncode == 0, ended.stderr
    row = item(conn, item_id)
    assert row["sale_starts_at"] == row["sale_ends_at"]
    answer = server.buy(item_id, "alice")
    assert answer.status_code == 409 and answer.json()["code"] == "sale_ended"
    again = sale("end", item_id)  # an ended sale keeps its end
    assert again.returncode == 0 and item(conn, item_id)["sale_ends_at"] == row["sale_ends_at"]


def test_export_writes_every_purchase_as_csv(reset, conn, server, tmp_path):
    reset(stock=10, items=2)
    for user in ["alice", "bob,with comma", 'carol "quoted"']:
        assert server.buy(1, user, quantity=2).status_code == 201
    assert server.buy(2, "dave").status_code == 201
    output = tmp_path / "item-1.csv"
    result = sale("export", "1", "--output", output)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "Exported 3 purchases of item 1" in result.stderr
    rows = list(csv.DictReader(output.open(newline="")))
    assert [row["user_id"] for row in rows] == ["alice", "bob,with comma", 'carol "quoted"']
    assert [int(row["purchase_id"]) for row in rows] == [row["id"] for row in purchases(conn, 1)]
    assert {row["quantity"] for row in rows} == {"2"}
    assert all(row["created_at"].endswith("Z") for row in rows)
    to_stdout = sale("export", "1")
    assert to_stdout.stdout == output.read_text()
    assert list(tmp_path.iterdir()) == [output]  # no temporary file left


def test_a_refused_export_writes_no_file(reset, tmp_path):
    reset(stock=1)
    output = tmp_path / "missing.csv"
    one_line_error(sale("export", "999", "--output", output))
    one_line_error(sale("export", "1", "--output", output, DATABASE_URL=UNREACHABLE))
    assert list(tmp_path.iterdir()) == []


def export_peak_memory_kib(item_id, output):
    """Run `sale export` and return the peak resident memory of that process alone."""
    process = subprocess.Popen([*FLASK, "sale", "export", str(item_id), "--output", str(output)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    return usage.ru_maxrss


def test_export_streams_rather_than_holding_the_rows(reset, conn, tmp_path):
    """200 000 purchases held in memory would take over 100 MB; streamed in batches, the export
    needs about what an export of none needs."""
    reset(stock=1, items=2)
    rows = 200_000
    run_test_query(conn, "insert_many_purchases", {"item_id": 1, "count": rows})
    baseline = export_peak_memory_kib(2, tmp_path / "none.csv")
    big = export_peak_memory_kib(1, tmp_path / "all.csv")
    print(f"export peak memory: {baseline} KiB for 0 rows, {big} KiB for {rows} rows")
    with (tmp_path / "all.csv").open() as exported:
        assert sum(1 for _ in exported) == rows + 1
    assert big - baseline < 25_000


def test_a_buyer_queued_behind_a_restock_buys_from_it(reset, conn, server):
    """The buyer's statement started before the restock committed: the version of the item in its
    snapshot has nothing left, the locked one has the new units. It must sell, not fail a CHECK."""
    reset(stock=1)
    assert server.buy(1, "first").status_code == 201
    with ThreadPoolExecutor(1) as pool:
        with restock_held(1, 5):
            queued = pool.submit(server.buy, 1, "queued")
            assert wait_for_waiting_buyers(conn, 1)
        answer = queued.result()
    assert answer.status_code == 201, answer.text
    assert answer.json()["remaining"] == 4
    row = item(conn, 1)
    assert (row["stock"], row["sold"], row["remaining"]) == (6, 2, 4)


def accounting(conn, burst, item_id):
    """The database and the buyers agree: sold + remaining == stock, and the 201s are exactly the rows."""
    row = item(conn, item_id)
    rows = purchases(conn, item_id)
    acknowledged = burst.acknowledged_ids()
    assert row["sold"] + row["remaining"] == row["stock"]
    assert sorted(acknowledged) == [purchase["id"] for purchase in rows]
    assert row["sold"] == sum(purchase["quantity"] for purchase in rows) == len(acknowledged)
    assert all(status in (201, 409) for _, status, _ in burst.answers)
    return row


def test_restock_during_a_burst_keeps_exact_accounting(reset, conn, server):
    reset(stock=50)
    # The burst sells the 50 units out, then the restock's 50 units while it goes on.
    result, burst = burst_around(server, 1, lambda: sale("restock", "1", "50"), before=200, after=200)
    assert result.returncode == 0, result.stderr
    row = accounting(conn, burst, 1)
    assert (row["stock"], row["sold"], row["remaining"]) == (100, 100, 0)
    assert len(burst.acknowledged_ids()) == 100  # the restocked units too were sold by the burst
    print(f"restock mid-burst: {len(burst.answers)} answers, {row['sold']} sold")


def test_end_during_a_burst_keeps_exact_accounting(reset, conn, server, tmp_path):
    reset(stock=100_000)

    def end_and_look():
        return [sale("end", "1"), sale("show", "1"), sale("list"), sale("export", "1", "--output", tmp_path / "x.csv")]

    results, burst = burst_around(server, 1, end_and_look, before=100, after=100)
    assert [result.returncode for result in results] == [0, 0, 0, 0], [result.stderr for result in results]
    row = accounting(conn, burst, 1)
    assert row["sold"] >= 100
    after_end = [(status, body.get("code")) for marked, status, body in burst.answers if marked]
    assert set(after_end) == {(409, "sale_ended")}  # sent after the end: none sold
    print(f"end mid-burst: {len(burst.answers)} answers, {row['sold']} sold before the end")
