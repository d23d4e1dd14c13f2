"""The holds' sweeper: a thread of each gunicorn worker that expires the holds past their expiry
every HOLD_SWEEP_SECONDS (queries/expire_holds.sql), on the worker's pooled connection when it is
idle. A purchase expires its own item's holds itself, so buyers never wait for a sweep; the sweep
is for items nobody is buying now, so that their figures and the metrics catch up. Sweepers of
every worker and host run at once safely: each hold's units come back once (docs/holds.md)."""
import random
import threading
import time

import db
from flashsale import metrics


def sweep_every(seconds):
    """Start the thread (gunicorn's post_worker_init); 0 seconds: no sweeper."""
    if seconds <= 0:
        return

    def sweep_forever():
        while True:
            time.sleep(random.uniform(0.5, 1.5) * seconds)  # the workers' sweeps spread out
            rows = db.sweep_holds()
            if rows:
                metrics.holds_swept(sum(row["holds"] for row in rows))

    threading.Thread(target=sweep_forever, name="sweeper", daemon=True).start()
