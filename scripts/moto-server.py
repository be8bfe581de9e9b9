"""moto server for the contract tests (scripts/test.sh starts it), with
DynamoDB's item writes made atomic, as they are in DynamoDB.

moto checks a write's condition and then writes, and its threaded server
can run a second request in between: 11 of 20 concurrent conditional
increments once passed a limit of 10. One lock around each write makes the
condition and the write one step, so the contract test's concurrency check
tests Keel's adapter, not moto's race."""

import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_writes = threading.RLock()


def _atomic(write):
    def locked(*args, **kwargs):
        with _writes:
            return write(*args, **kwargs)

    return locked


for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
    setattr(DynamoDBBackend, name, _atomic(getattr(DynamoDBBackend, name)))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
