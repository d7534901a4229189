"""Dependency audit for CI: ``python -m deploy.audit [requirements.lock]``.

Runs pip-audit on the pinned dependencies and reads its JSON report:

- a known vulnerability in a pinned version fails (exit 1), naming package, version and advisory;
- when the advisory source cannot be reached or knows none of the packages (a package mirror
  without the vulnerability API, no network), it says so clearly on stderr and does not fail
  (exit 0): an audit that did not happen is reported, never counted as a pass or a failure.
"""

from __future__ import annotations

import json
import subprocess  # nosec B404  # runs pip-audit with a fixed argument list
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AuditResult:
    """What one pip-audit report says."""

    audited: int
    """Dependencies the advisory source answered for."""
    skipped: list[str]
    """``name (reason)`` of the dependencies it could not audit."""
    findings: list[str]
    """``name version: advisory ids (fixed in ...)`` of every vulnerable dependency."""


def read_report(report: dict[str, Any]) -> AuditResult:
    """Summarise pip-audit's JSON report (``-f json``)."""
    audited, skipped, findings = 0, [], []
    for dep in report.get("dependencies", []):
        if dep.get("skip_reason"):
            skipped.append(f"{dep['name']} ({dep['skip_reason']})")
            continue
        audited += 1
        for vuln in dep.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed version"
            ids = ", ".join([vuln["id"], *vuln.get("aliases", [])])
            findings.append(f"{dep['name']} {dep.get('version', '?')}: {ids} (fixed in {fixed})")
    return AuditResult(audited, skipped, findings)


def verdict(result: AuditResult | None, error: str = "") -> tuple[int, list[str]]:
    """Exit code and the lines to print for an audit's result (None: pip-audit did not report)."""
    if result is None:
        return 0, [f"audit: NOT RUN: pip-audit could not reach its advisory source: {error.strip()[-300:]}"]
    lines = [f"audit: VULNERABLE: {f}" for f in result.findings]
    if result.skipped:
        lines.append(
            f"audit: INCOMPLETE: {len(result.skipped)} of {len(result.skipped) + result.audited} dependencies "
            f"could not be audited (advisory source unreachable or without them), e.g. {result.skipped[0]}"
        )
    if result.audited and not result.findings:
        lines.append(f"audit: {result.audited} dependencies audited, no known vulnerability")
    return (1 if result.findings else 0), lines


def main(argv: list[str]) -> int:
    """Audit ``argv[0]`` (default ``requirements.lock``); see the module docstring for the exit code."""
    lock = Path(argv[0] if argv else "requirements.lock")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        proc = subprocess.run(  # nosec B603  # fixed arguments, no shell
            [
                sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip",
                "--progress-spinner", "off", "-f", "json", "-o", str(out),
            ],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        result = read_report(json.loads(out.read_text())) if out.exists() and out.stat().st_size else None
    code, lines = verdict(result, proc.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
