"""CI installs everything the tests need, so there a skipped test fails the run (CNNSERVE_NO_SKIPS=1, set
by .ci/run); elsewhere a test whose tool is missing (Chromium) skips and says why."""
from pathlib import Path

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).resolve().parent / "conftest.py"
PLAIN = ("-p", "no:xdist", "-p", "no:hypothesispytest")


def test_a_skip_fails_the_run_only_under_cnnserve_no_skips(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile("import pytest\n\ndef test_needs_a_tool():\n    pytest.skip('no chromium')\n\n"
                        "def test_plain():\n    pass\n")
    monkeypatch.setenv("CNNSERVE_NO_SKIPS", "1")
    # In this process, with only the plugins the check needs: a pytest subprocess costs seconds of start-up.
    strict = pytester.runpytest_inprocess(*PLAIN)
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["*CNNSERVE_NO_SKIPS: 1 test(s) skipped*test_needs_a_tool*"])
    monkeypatch.delenv("CNNSERVE_NO_SKIPS")
    relaxed = pytester.runpytest_inprocess(*PLAIN)
    assert relaxed.ret == 0
    relaxed.assert_outcomes(passed=1, skipped=1)
