"""Run a local Orthanc PACS with DICOMweb, for the MONAI Label app and OHIF.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide the server and the plugin::

    apt-get install orthanc orthanc-dicomweb
    python -m bundle.scripts.orthanc start --storage runs/pacs --http_port 8042
    # DICOMweb at http://127.0.0.1:8042/dicom-web/
    python -m bundle.scripts.orthanc stop --storage runs/pacs

The server keeps its database and files in ``STORAGE/db``, writes its configuration to ``STORAGE/orthanc.json``,
its log to ``STORAGE/orthanc.log`` and its process id to ``STORAGE/orthanc.pid``, by which ``stop`` ends it. It
serves HTTP only (no DICOM port) and refuses every connection that does not come from this host
(``RemoteAccessAllowed: false``); Orthanc 1.10 cannot bind to one address, so that is its guard.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["DICOMWEB_ROOT", "find_dicomweb_plugin", "is_running", "main", "start", "stop", "write_config"]

DICOMWEB_ROOT = "/dicom-web/"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
PLUGIN_NAME = "libOrthancDicomWeb.so"


def find_dicomweb_plugin(plugin: str | os.PathLike | None = None) -> Path:
    """The DICOMweb plugin: ``plugin`` if given, else the first found in the usual package folders.

    Raises:
        FileNotFoundError: no plugin file (install Debian's ``orthanc-dicomweb``).
    """
    candidates = [Path(plugin)] if plugin else [Path(folder) / PLUGIN_NAME for folder in PLUGIN_DIRS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Orthanc's DICOMweb plugin not found (looked for {', '.join(map(str, candidates))}); "
        "install it with `apt-get install orthanc-dicomweb` or pass --plugin."
    )


def write_config(storage: str | os.PathLike, http_port: int = 8042, plugin: str | os.PathLike | None = None) -> Path:
    """Write ``STORAGE/orthanc.json``: storage under ``STORAGE/db``, HTTP on ``http_port``, DICOMweb, local only."""
    if not 1 <= int(http_port) <= 65535:
        raise ValueError(f"http_port must be in 1..65535, got {http_port}.")
    storage = Path(storage).resolve()
    (storage / "db").mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "MaxQuery PACS",
        "StorageDirectory": str(storage / "db"),
        "IndexDirectory": str(storage / "db"),
        "HttpServerEnabled": True,
        "HttpPort": int(http_port),
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpDescribeErrors": True,
        "StableAge": 5,
        "Plugins": [str(find_dicomweb_plugin(plugin))],
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }
    path = storage / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _pid_file(storage: Path) -> Path:
    return storage / "orthanc.pid"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def is_running(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie of ours)."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(
    storage: str | os.PathLike,
    http_port: int = 8042,
    orthanc: str = "Orthanc",
    plugin: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> int:
    """Start Orthanc on ``127.0.0.1:http_port`` and wait until DICOMweb answers; return its process id.

    Raises:
        RuntimeError: a server of this storage folder already runs, or Orthanc did not answer in ``timeout``
            seconds (it is stopped, and the message holds the end of its log).
    """
    storage = Path(storage).resolve()
    pid_file = _pid_file(storage)
    if pid_file.is_file():
        old = int(pid_file.read_text().strip() or 0)
        if old and is_running(old):
            raise RuntimeError(f"an Orthanc of {storage} already runs (pid {old}); stop it first.")
        pid_file.unlink()
    config = write_config(storage, http_port, plugin)
    log = open(storage / "orthanc.log", "ab")  # noqa: SIM115 - the server keeps writing to it
    try:
        process = subprocess.Popen(
            [orthanc, str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=storage
        )
    finally:
        log.close()
    pid_file.write_text(str(process.pid))
    url = f"http://127.0.0.1:{int(http_port)}{DICOMWEB_ROOT}studies"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(url):
            return process.pid
        time.sleep(0.25)
    stop(storage)
    tail = (storage / "orthanc.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Orthanc did not serve {url} within {timeout:.0f} s; end of {storage / 'orthanc.log'}:\n{tail}")


def stop(storage: str | os.PathLike, timeout: float = 20.0) -> bool:
    """Stop the Orthanc of ``storage`` by the process id it wrote; return whether one was running."""
    pid_file = _pid_file(Path(storage).resolve())
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    running = bool(pid) and is_running(pid)
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_running(pid):
            os.kill(pid, signal.SIGKILL)
            while is_running(pid):
                time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    return running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--storage", required=True, help="folder for the database, config, log and pid file")
    parser.add_argument("--http_port", type=int, default=8042)
    parser.add_argument("--orthanc", default="Orthanc", help="the Orthanc executable")
    parser.add_argument("--plugin", default=None, help=f"path of {PLUGIN_NAME} (default: found in {PLUGIN_DIRS})")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            pid = start(args.storage, args.http_port, args.orthanc, args.plugin)
            print(f"Orthanc runs (pid {pid}); DICOMweb at http://127.0.0.1:{args.http_port}{DICOMWEB_ROOT}")
        elif stop(args.storage):
            print("Orthanc stopped.")
        else:
            print(f"no Orthanc of {args.storage} was running.")
    except (RuntimeError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
