"""A real Orthanc PACS for the tests (Debian's ``orthanc`` and ``orthanc-dicomweb``), on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bundle.scripts import orthanc

__all__ = ["orthanc_available", "running_orthanc"]


def orthanc_available() -> bool:
    """Whether Orthanc and its DICOMweb plugin are installed."""
    if shutil.which("Orthanc") is None:
        return False
    try:
        orthanc.find_dicomweb_plugin()
    except FileNotFoundError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_orthanc(storage: Path) -> Iterator[str]:
    """Start Orthanc with its storage in ``storage``; yield its DICOMweb URL; stop it by its PID, also on failure.

    Skipped where Orthanc is missing, except in CI (``CI`` set), whose ``.ci/run`` installs it.
    """
    if not orthanc_available():
        if os.environ.get("CI"):
            pytest.fail("Orthanc or its DICOMweb plugin is missing; .ci/run installs orthanc and orthanc-dicomweb.")
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb).")
    port = _free_port()
    orthanc.start(storage, http_port=port)
    try:
        yield f"http://127.0.0.1:{port}{orthanc.DICOMWEB_ROOT.rstrip('/')}"
    finally:
        orthanc.stop(storage)
