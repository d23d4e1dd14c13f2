"""The status page in a real browser (Debian's headless Chromium, driven by selenium), during a
burst through real gunicorn."""
import threading
import time

import pytest
import requests

from support import burst, item, open_browser, set_sale, wait_for
from verify import stripe_events as stripe

SECRET = "whsec_tests_status_page"


@pytest.fixture
def browser(tmp_path):
    driver = open_browser(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def card_figures(browser, item_id):
    """(remaining as shown, bar width in %) of an item's card."""
    card = browser.find_element("css selector", f'.sale[data-id="{item_id}"]')
    remaining = int(card.find_element("css selector", ".remaining").text)
    width = float(card.find_element("css selector", ".fill").value_of_css_property("width").removesuffix("px"))
    full = float(card.find_element("css selector", ".bar").value_of_css_property("width").removesuffix("px"))
    return remaining, round(100 * width / full)


def waves_of_buyers(server, waves, size):
    """A burst long enough for the page to refresh several times while it lasts."""
    for wave in range(waves):
        burst(server, size, threads=8, prefix=f"wave-{wave}")
        time.sleep(0.5)


def test_the_page_follows_a_burst(start_server, reset, conn, browser, tmp_path):
    reset(stock=300, items=3)
    set_sale(conn, 2, starts_in=3600, ends_in=7200)
    set_sale(conn, 3, starts_in=-20, ends_in=-10)  # ended: not a current sale
    server = start_server(WEB_CONCURRENCY="3").wait_ready()
    browser.get(f"{server.url}/status")
    assert wait_for(lambda: "Updated" in browser.find_element("id", "updated").text)
    assert [card.get_attribute("data-id") for card in browser.find_elements("css selector", ".sale")] == ["1", "2"]
    assert card_figures(browser, 1) == (300, 100)
    assert not browser.find_element("css selector", '.sale[data-id="1"] .holding').is_displayed()  # sells at once
    assert browser.find_element("css selector", '.sale[data-id="2"] .state').text.lower() == "scheduled"

    shown = set()
    buying = threading.Thread(target=waves_of_buyers, args=(server, 6, 40))
    buying.start()
    while buying.is_alive():
        shown.add(card_figures(browser, 1))
        buying.join(0.2)
    left = item(conn)["remaining"]
    assert left == 60
    # The bar fills 20% once the page has caught up (the CSS eases the width over 0.4 s).
    assert wait_for(lambda: card_figures(browser, 1) == (60, 20))
    print(f"figures the page showed during the burst (remaining, bar %): {sorted(shown, reverse=True)}")
    assert len({width for _, width in shown}) >= 2  # the bar moved while buyers bought
    rate = browser.find_element("css selector", '.sale[data-id="1"] .rate').text
    assert float(rate) > 0


def test_the_page_is_served_without_script(start_server, reset):
    reset(stock=5, items=2)
    server = start_server(WEB_CONCURRENCY="1").wait_ready()
    page = requests.get(f"{server.url}/status", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'name="viewport"' in page.text and page.text.count('class="sale"') == 2 + 1  # and the template
    for name in ("status.js", "status.css"):
        assert requests.get(f"{server.url}/static/{name}", timeout=10).status_code == 200


def test_the_page_shows_units_held_for_payment_beside_those_sold(start_server, reset, conn, browser):
    reset(stock=10, hold_seconds=600, price=250, currency="EUR")
    server = start_server(WEB_CONCURRENCY="2", STRIPE_WEBHOOK_SECRET=SECRET).wait_ready()
    holds = [server.buy(1, f"buyer-{n}").json()["purchase_id"] for n in range(4)]
    assert stripe.deliver(server.url, stripe.intent_succeeded(holds[0], 250, "eur"), SECRET).json()["outcome"] == \
        "confirmed"
    browser.get(f"{server.url}/status")
    card = browser.find_element("css selector", '.sale[data-id="1"]')

    def figures():
        return (card.find_element("css selector", ".sold").text, card.find_element("css selector", ".held").text,
                card.find_element("css selector", ".remaining").text)

    assert card.find_element("css selector", ".holding").is_displayed()
    assert wait_for(lambda: figures() == ("1", "3", "6"))
    requests.post(f"{server.url}/purchases/{holds[1]}/cancel", json={"user_id": "buyer-1"}, timeout=10)
    assert wait_for(lambda: figures() == ("1", "2", "7"))  # the page refreshed by itself
    assert card.find_element("css selector", ".revenue").text == "2.50 EUR"
    assert not card.find_element("css selector", ".refunds").is_displayed()
    assert stripe.deliver(server.url, stripe.intent_succeeded(holds[0], 250, "eur"), SECRET).json()["outcome"] == \
        "refund_due"
    assert wait_for(lambda: card.find_element("css selector", ".refunds").is_displayed())
    assert card.find_element("css selector", ".refunds").text == "· 1 refunds owed"
