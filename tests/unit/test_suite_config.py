"""The suite itself: a hung test fails instead of hanging CI (pytest-timeout, per test)."""


def test_every_test_has_a_timeout(request):
    assert request.config.pluginmanager.hasplugin("timeout")
    assert 0 < float(request.config.getini("timeout")) <= 600
