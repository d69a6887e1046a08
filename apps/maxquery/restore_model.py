"""List the backups of the served model, or put one back (model and calibration together).

Training through the MONAI Label app keeps the replaced model and its OOD calibration in ``<model>_backups/``
next to the model (``models/model_backups/`` by default). From the repository root::

    python apps/maxquery/restore_model.py --list
    python apps/maxquery/restore_model.py                      # the newest backup of another model
    python apps/maxquery/restore_model.py --backup 20250101-120000-000000-0123456789ab

A running server serves the restored model from its next request (it checks the model file's hash). The model
being replaced is backed up first, so a restore can be undone the same way. Pass ``--model_path`` (and
``--calibration_path``) when the server was started with ``--conf model_path``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
BUNDLE_ROOT = APP_DIR.parents[1]
for folder in (APP_DIR, BUNDLE_ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from lib.errors import NotFoundError  # noqa: E402
from lib.model_store import ModelStore  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0: done, 1: no such backup)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_path", default=str(BUNDLE_ROOT / "models" / "model.pt"), help="the served model")
    parser.add_argument("--calibration_path", help="its calibration (default: ood_calibration.json next to it)")
    parser.add_argument("--backup", help="the backup to restore (default: the newest of another model)")
    parser.add_argument("--list", action="store_true", help="list the backups, newest first, and stop")
    args = parser.parse_args(argv)

    model_path = Path(args.model_path).expanduser().resolve()
    calibration_path = Path(args.calibration_path or model_path.with_name("ood_calibration.json"))
    # restoring copies files only: no network is built, so the bundle configs are not needed
    store = ModelStore(None, model_path, calibration_path.expanduser().resolve())  # type: ignore[arg-type]
    if args.list:
        print(json.dumps({"current_sha256": store.model_sha256(), "backups": store.backups()}, indent=2))
        return 0
    try:
        result = store.restore(args.backup)
    except NotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
