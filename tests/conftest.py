"""
Test-suite wide settings.

In CI (the CI environment variable set) a skipped test is a failure: a run
that silently skips hides what it did not check.
"""

import os

import pytest


def _inCI() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _inCI() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {reason}"


@pytest.fixture
def redis_server(tmp_path):
    """
    A redis-server of the test's own on a free loopback port (a
    L{tests.redis_helpers.RedisServer}), killed after the test.
    """
    from tests.redis_helpers import RedisServer, findRedisServer

    binary = findRedisServer()
    if binary is None:
        pytest.skip("redis-server not found: install it (Debian: apt-get install redis-server) "
                    "or set REDIS_SERVER to its path")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def service():
    """
    A started L{BackplaneService} with one backplane, C{DATA}; stopped
    after the test.
    """
    import pytest_twisted

    from backplane import BackplaneService

    service = BackplaneService()
    service.create("DATA")
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())
