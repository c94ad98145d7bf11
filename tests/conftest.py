import os

# under pytest-xdist (make test runs one worker per core) each worker computes on one thread: two workers with two
# threads each on the CI's 2 cores would oversubscribe them
WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1 if WORKER else max(1, min(2, torch.get_num_threads())))
