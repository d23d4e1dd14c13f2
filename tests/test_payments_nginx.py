"""Stripe's webhook behind nginx: its own body limit of 64 KiB, where every other route keeps 4 KiB,
refused by nginx as the same problem+json."""
import requests

from support import assert_http_problem, flask_command
from verify import stripe_events as stripe

SECRET = "whsec_tests_nginx"


def test_the_webhook_takes_64_kib_through_nginx_and_purchases_4(start_proxied, reset):
    reset(stock=10, hold_seconds=600, price=500, currency="EUR")
    proxy = start_proxied(WEB_CONCURRENCY="1", STRIPE_WEBHOOK_SECRET=SECRET)
    held = requests.post(f"{proxy.url}/buy_ticket", json={"item_id": 1, "user_id": "alice"}, timeout=10).json()
    big = stripe.checkout_completed(held["purchase_id"], 500, "eur")
    big["data"]["object"]["description"] = "x" * 60000  # a real Checkout Session with many line items
    answer = stripe.deliver(proxy.url, big, SECRET)
    assert answer.status_code == 200 and answer.json()["outcome"] == "confirmed", answer.text

    bigger = stripe.checkout_completed(held["purchase_id"], 500, "eur")
    bigger["data"]["object"]["description"] = "x" * 66000
    refused = assert_http_problem(stripe.deliver(proxy.url, bigger, SECRET), 413, "payload_too_large")
    assert refused["detail"] == "The body is over 64 KiB."
    purchase = requests.post(f"{proxy.url}/buy_ticket", json={"item_id": 1, "user_id": "b" * 5000}, timeout=10)
    assert assert_http_problem(purchase, 413, "payload_too_large")["detail"] == "The body is over 4 KiB."
    shown = flask_command("sale", "show", 1)
    assert "revenue:      5.00 EUR" in shown.stdout, shown.stdout
