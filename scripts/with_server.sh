#!/usr/bin/env bash
# Start gunicorn on a free local port, run the given command with API_URL pointing at it,
# stop gunicorn, and exit with the command's exit code.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export API_URL=http://127.0.0.1:$PORT
LOG=$ROOT/.gunicorn.log

"$ROOT/.venv/bin/gunicorn" -c "$ROOT/gunicorn.conf.py" --chdir "$ROOT" -b "127.0.0.1:$PORT" >"$LOG" 2>&1 &
GUNICORN=$!
trap 'kill -TERM $GUNICORN 2>/dev/null; wait $GUNICORN 2>/dev/null' EXIT

"$@"
status=$?
if [ $status -ne 0 ]; then
    echo "--- last lines of the server log ($LOG) ---"
    tail -n 20 "$LOG"
fi
exit $status
