"""Entry point of an export worker process: ``python -m labelloop.export.shard_worker WORKDIR``.

A module of its own so the classes the worker pickles back are those of
:mod:`labelloop.export.shards`, not copies defined in ``__main__``.
"""

import sys
from pathlib import Path

from labelloop.export.shards import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1])))
