"""The CI dependency audit: a finding fails, an audit that could not happen says so and passes."""

from __future__ import annotations

from deploy.audit import read_report, verdict


def test_a_known_vulnerability_fails_naming_it() -> None:
    report = {
        "dependencies": [
            {"name": "ok", "version": "1.0", "vulns": []},
            {
                "name": "bad", "version": "2.0",
                "vulns": [{"id": "PYSEC-1", "aliases": ["CVE-2099-1"], "fix_versions": ["2.1"]}],
            },
        ]
    }  # fmt: skip
    code, lines = verdict(read_report(report))
    assert code == 1
    assert lines == ["audit: VULNERABLE: bad 2.0: PYSEC-1, CVE-2099-1 (fixed in 2.1)"]


def test_an_unreachable_source_is_reported_and_does_not_fail() -> None:
    report = {"dependencies": [{"name": "x", "skip_reason": "Dependency not found on PyPI"}]}
    code, lines = verdict(read_report(report))
    assert code == 0
    assert lines == [
        "audit: INCOMPLETE: 1 of 1 dependencies could not be audited (advisory source unreachable or without "
        "them), e.g. x (Dependency not found on PyPI)"
    ]
    code, lines = verdict(None, "ConnectionError: Failed to resolve 'api.osv.dev'")
    assert code == 0 and lines[0].startswith("audit: NOT RUN:") and "api.osv.dev" in lines[0]


def test_a_clean_audit_passes() -> None:
    code, lines = verdict(read_report({"dependencies": [{"name": "ok", "version": "1", "vulns": []}]}))
    assert (code, lines) == (0, ["audit: 1 dependencies audited, no known vulnerability"])
