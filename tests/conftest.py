"""Shared fixtures. Tests marked `tailnet` need the local test tailnet (TESTNET_INFO): run them as
`python -m tailproxy.testnet -- pytest ...` (what `make test` does). Outside it they are skipped,
unless TAILPROXY_REQUIRE_TESTNET=1, where a missing tailnet is a failure."""
import json
import os

import pytest

# The tests written for one node per run keep that mode (--agent=false) unless they ask for the
# shared agent (tests/e2e/test_agent.py sets TAILPROXY_AGENT=1 itself).
os.environ.setdefault("TAILPROXY_AGENT", "0")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TESTNET_INFO") or os.environ.get("TAILPROXY_REQUIRE_TESTNET") == "1":
        return  # inside the tailnet, or required: the testnet fixture fails when it is missing
    skip = pytest.mark.skip(reason="needs the local test tailnet (python -m tailproxy.testnet)")
    for item in items:
        if "tailnet" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def testnet():
    path = os.environ.get("TESTNET_INFO")
    if not path:
        pytest.fail("TESTNET_INFO is not set")
    with open(path) as f:
        return json.load(f)


@pytest.fixture
def short_tmp():
    """A fresh directory with a short path (pytest's tmp_path can be too long a base for the
    unix sockets a run keeps under XDG_RUNTIME_DIR: sun_path holds 107 bytes)."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="tp-", dir="/tmp")
    yield __import__("pathlib").Path(d)
    shutil.rmtree(d, ignore_errors=True)
