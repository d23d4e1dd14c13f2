"""Fire a concurrent burst of purchases at the running service and prove that it sold exactly the
stock: the buyers' answers against the database's rows, and every answer against one serial
order (verify/history.py). The proof itself is verify/proof.py; `--help` lists its options."""
import sys

from verify import proof

if __name__ == "__main__":
    sys.exit(proof.main())
