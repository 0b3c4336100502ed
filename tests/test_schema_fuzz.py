"""The OpenAPI schema is the API's contract: schemathesis, driven by /api/openapi.json alone, sends a few hundred
generated requests per operation to the real server (uvicorn on loopback) and every check must hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import api_process

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")  # adds a check: schema-valid requests pass validation
EXAMPLES = 300  # per operation; SECURITY.md says how to run more
SEED = 22


def test_schemathesis_finds_no_disagreement(birdclf_home, tmp_path):
    env = {"BIRDCLF_MAX_BYTES": "2MB", "BIRDCLF_MAX_PIXELS": "4000000", "BIRDCLF_MAX_IMAGES": "4",
           "BIRDCLF_URL_TIMEOUT": "2"}
    with api_process(birdclf_home, env) as server:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(CONFIG), "run",
             f"{server.base}/openapi.json", "--checks", "all", "--seed", str(SEED), "--max-examples", str(EXAMPLES),
             "--workers", "1", "--continue-on-failure", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)})
        log = server.log_text()
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and int(generated[1]) >= EXAMPLES and generated[1] == generated[2], report[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert "python_multipart" not in log, "the multipart parser's warnings reached the log"
