"""Load on the MONAI Label server: simultaneous inference requests while ``/info/`` is polled.

Starts ``monailabel start_server`` on 127.0.0.1 with the test suite's tiny studies and tiny model (the same set-up
as ``tests/test_monailabel_server.py``), sends ``--requests`` inference requests at once, polls ``GET /info/``
every 50 ms until they are all answered, stops the server, and prints the status codes, the inference times and
the ``/info/`` latencies. Run from the repository root::

    python benchmarks/server_load.py [--requests 8] [--infer_concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_monailabel_app import make_model, make_studies  # noqa: E402
from test_monailabel_server import running_server, simultaneous_inference  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="simultaneous inference requests")
    parser.add_argument("--infer_concurrency", type=int, default=2, help="the server's inference slots")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        studies = make_studies(work / "studies", ["case_a", "case_b"])
        model = make_model(work / "model")
        conf = {"infer_concurrency": str(args.infer_concurrency)}
        with running_server(work, studies, model, conf=conf) as (client, _):
            client.post("/infer/maxquery", params={"image": "case_a", "output": "json"})  # load the model once
            timed, info_answers = simultaneous_inference(client, args.requests, timeout_s=600)
    results = [(response.status_code, seconds) for response, seconds in timed]
    latencies = [seconds for _, seconds in info_answers]
    codes = sorted(code for code, _ in results)
    served = [seconds for code, seconds in results if code == 200]
    refused = [seconds for code, seconds in results if code == 503]
    info = np.asarray(latencies)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; tiny model on the CPU")
    print(f"{args.requests} simultaneous POST /infer/maxquery, infer_concurrency {args.infer_concurrency}")
    others = len(codes) - len(served) - len(refused)
    print(f"status codes: {codes.count(200)} x 200, {codes.count(503)} x 503, {others} other")
    if served:
        print(f"served in {min(served):.2f}-{max(served):.2f} s; refused in {max(refused, default=0):.3f} s at most")
    print(
        f"GET /info/ meanwhile: {len(info)} requests, median {np.median(info) * 1000:.0f} ms, "
        f"p95 {np.percentile(info, 95) * 1000:.0f} ms, max {info.max() * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
