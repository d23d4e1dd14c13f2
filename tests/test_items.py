"""GET /items: every item with its sale's state, in id order, a page at a time."""
import pytest

from support import assert_problem, set_sale


def test_items_are_listed_in_pages_that_name_the_next(client, reset):
    reset(stock=10, items=5)
    first = client.get("/items?limit=2").get_json()
    assert [item["id"] for item in first["items"]] == [1, 2]
    assert first["next_after"] == 2 and first["next"] == "/items?after=2&limit=2"
    second = client.get(first["next"]).get_json()
    third = client.get(second["next"]).get_json()
    assert [item["id"] for item in second["items"] + third["items"]] == [3, 4, 5]
    assert third["next_after"] is None and third["next"] is None


def test_an_item_is_as_in_get_item_plus_its_state(client, reset):
    reset(stock=10, items=2)
    listed = client.get("/items").get_json()
    assert listed["next"] is None
    for item in listed["items"]:
        alone = client.get(f"/items/{item['id']}").get_json()
        assert item == {**alone, "state": "open"}


def test_each_state(client, reset, conn):
    reset(stock=10, items=5)
    set_sale(conn, 2, starts_in=3600, ends_in=7200)
    set_sale(conn, 3, remaining=0)
    set_sale(conn, 4, starts_in=-20, ends_in=-10)
    set_sale(conn, 5, remaining=0, starts_in=-20, ends_in=-10)
    states = [item["state"] for item in client.get("/items").get_json()["items"]]
    assert states == ["open", "scheduled", "sold_out", "ended", "ended"]


def test_the_default_page_holds_100_and_the_largest_1000(client, reset):
    reset(stock=1, items=1001)
    default = client.get("/items").get_json()
    assert len(default["items"]) == 100 and default["next_after"] == 100
    largest = client.get("/items?limit=1000").get_json()
    assert len(largest["items"]) == 1000 and largest["next"] == "/items?after=1000&limit=1000"
    last = client.get(largest["next"]).get_json()
    assert [item["id"] for item in last["items"]] == [1001] and last["next"] is None


def test_after_the_last_item_the_page_is_empty(client):
    assert client.get("/items?after=2147483647").get_json() == {"items": [], "next_after": None, "next": None}


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"),
    ("limit=", "limit"), ("limit=1.5", "limit"), ("limit=%C2%B2", "limit"), ("limit=99999999999", "limit"),
    ("after=-1", "after"), ("after=2147483648", "after"), ("after=x", "after"),
    ("limit=1&limit=2", "limit"), ("page=2", "page"),
])
def test_bad_parameters_are_422(client, query, field):
    body = assert_problem(client.get(f"/items?{query}"), 422, "invalid_request")
    assert [error["field"] for error in body["errors"]] == [field]


def test_every_bad_parameter_is_named(client):
    body = assert_problem(client.get("/items?limit=0&after=x&sort=id"), 422, "invalid_request")
    assert [error["field"] for error in body["errors"]] == ["after", "limit", "sort"]


def test_an_items_money_is_for_operators_only(client, reset):
    """Price and currency are for everyone; revenue and refunds owed only for METRICS_ALLOW's
    addresses (loopback here), as /metrics."""
    reset(stock=10, price=250, currency="EUR")
    stranger = {"REMOTE_ADDR": "203.0.113.9"}
    for path in ("/items/1", "/items"):
        operator = client.get(path).get_json()
        public = client.get(path, environ_base=stranger).get_json()
        operator, public = (body["items"][0] if "items" in body else body for body in (operator, public))
        assert operator["revenue"] == 0 and operator["refunds_owed"] == 0
        assert public == {key: value for key, value in operator.items() if key not in ("revenue", "refunds_owed")}
        assert (public["price"], public["currency"]) == (250, "EUR")
    page = client.get("/status", environ_base=stranger).get_data(as_text=True)
    assert "revenue" in client.get("/status").get_data(as_text=True)
    assert '<p class="money" hidden>' in page
