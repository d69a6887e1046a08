"""A real Orthanc PACS for the tests (Debian's ``orthanc`` and ``orthanc-dicomweb``), on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_monailabel_server import free_port

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


@contextmanager
def running_orthanc(storage: Path) -> Iterator[str]:
    """Start Orthanc with its storage in ``storage``; yield its DICOMweb URL; stop it by its PID, also on failure.

    Skipped where Orthanc is missing, except in CI (``CI`` set), whose ``.ci/run`` installs it.
    """
    if not orthanc_available():
        if os.environ.get("CI"):
            pytest.fail("Orthanc or its DICOMweb plugin is missing; .ci/run installs orthanc and orthanc-dicomweb.")
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb).")
    port = free_port()
    orthanc.start(storage, http_port=port)
    try:
        yield f"http://127.0.0.1:{port}{orthanc.DICOMWEB_ROOT.rstrip('/')}"
    finally:
        orthanc.stop(storage)
