"""The proof script against real gunicorn, and its verdict on runs that went wrong."""
from verify import history
from verify import proof
from support import TOKEN_SECRET

SECRET = "whsec_tests_proof"  # the service's STRIPE_WEBHOOK_SECRET: the proof signs its payments with it


def test_proof_passes_on_the_real_service(server, capsys):
    status = proof.main(["--url", server.url, "--requests", "300", "--processes", "20", "--stock", "50"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "SUCCESS: Strict consistency maintained. Exactly 50 items sold." in out
    assert "409 sold_out" in out and "p99" in out


def test_proof_with_repeating_users_and_retries(server, capsys):
    status = proof.main(["--url", server.url, "--requests", "200", "--processes", "20", "--stock", "50",
                         "--users", "10", "--max-per-user", "2", "--retry"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "Exactly 20 items sold." in out


def test_proof_of_a_held_sale_with_late_payments(start_server, capsys):
    """Holds of 2 s, 60% of the first wave pays by signed webhooks each delivered twice, at random
    within 2.5 s of its hold: some too late, owed back; waves of buyers until the stock is paid
    for; the workers' sweepers expire what is left."""
    server = start_server(WEB_CONCURRENCY="4", HOLD_SWEEP_SECONDS="0.5", STRIPE_WEBHOOK_SECRET=SECRET).wait_ready()
    status = proof.main(["--url", server.url, "--requests", "300", "--processes", "20", "--stock", "60",
                         "--hold-seconds", "2", "--confirm-ratio", "0.6", "--pay-within", "2.5",
                         "--webhook-secret", SECRET])
    out = capsys.readouterr().out
    assert status == 0, out
    last = out.splitlines()[-1]
    assert last.startswith("SUCCESS: Strict consistency maintained. Exactly 60 items confirmed, 0 held past expiry, "
                           "0 units lost or doubled; units confirmed = stock, payments confirmed 60 x 12.50 EUR "
                           "= revenue 750.00 EUR, late payments "), last
    late = int(last.split("late payments ")[1].split()[0])
    assert late > 0 and last.endswith(f"= refunds owed {late}, 0 applied twice."), last
    assert "Wave 2:" in out and "expired" in out and "webhook duplicate" in out


def test_a_held_sale_is_proved_in_verified_mode(start_server, capsys):
    server = start_server(WEB_CONCURRENCY="2", AUTH_JWT_SECRET=TOKEN_SECRET, HOLD_SWEEP_SECONDS="0.5",
                          STRIPE_WEBHOOK_SECRET=SECRET).wait_ready()
    status = proof.main(["--url", server.url, "--requests", "60", "--processes", "10", "--stock", "20",
                         "--hold-seconds", "1", "--confirm-ratio", "0.5", "--token-secret", TOKEN_SECRET,
                         "--webhook-secret", SECRET])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "Exactly 20 items confirmed" in out


def fabricated_run(sold_rows, acknowledged, stock=2):
    options = proof.parse_options(["--database-url", "unused", "--requests", "4", "--stock", str(stock)])
    purchases = proof.make_purchases(options)
    for number, purchase in enumerate(purchases, start=1):
        if number <= acknowledged:
            purchase.buy.attempts.append(history.Attempt(0.0, 0.1, 201, {"purchase_id": number}))
        else:
            purchase.buy.attempts.append(history.Attempt(0.0, 0.1, 409, {"code": "sold_out"}))
    rows = [{"id": n, "user_id": f"user-{n - 1}", "quantity": 1, "idempotency_key": "k", "status": "confirmed"}
            for n in range(1, sold_rows + 1)]
    item = {"stock": stock, "sold": sold_rows, "remaining": stock - sold_rows}
    return proof.verdict(options, purchases, item, rows)


def test_verdict_accepts_an_exact_sell_out():
    assert fabricated_run(sold_rows=2, acknowledged=2) == []


def test_verdict_catches_an_oversell():
    failures = fabricated_run(sold_rows=3, acknowledged=3)
    assert any("expected 2 sold" in failure for failure in failures)


def test_verdict_catches_a_lost_acknowledgement():
    failures = fabricated_run(sold_rows=2, acknowledged=1)
    assert any("rows sold without a 201" in failure for failure in failures)


def test_verdict_catches_an_undersell():
    failures = fabricated_run(sold_rows=1, acknowledged=1)
    assert any("units remain" in failure for failure in failures)
