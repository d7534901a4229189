"""The dashboard's files as the API serves them: a fixed set, under a strict Content-Security-Policy,
with no inline script or style and no HTML built from strings in the scripts."""

from __future__ import annotations

import re

from api.routes.ui import ASSETS, UI_DIR
from tests.api.conftest import Running


async def test_ui_files_are_served_with_a_strict_policy(cold_api: Running) -> None:
    http = cold_api.http
    r = await http.get("/ui")
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    for path in ["/ui/", *(f"/ui/{name}" for name in ASSETS)]:
        r = await http.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
            assert directive in csp, (path, csp)
        assert "unsafe" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert (await http.get("/ui/")).headers["content-type"] == "text/html; charset=utf-8"
    assert (await http.get("/ui/app.js")).headers["content-type"].startswith("text/javascript")
    # Only the listed files: nothing else of the package, however the name is spelled.
    for path in ("/ui/app.py", "/ui/..%2Froutes%2Fui.py", "/ui/.%2Fapp.js", "/ui/%2e%2e/app.py", "/ui/x/app.js"):
        r = await http.get(path)
        assert r.status_code == 404, path
    openapi = (await http.get("/openapi.json")).json()
    assert not [p for p in openapi["paths"] if p.startswith("/ui")]


def test_every_shipped_file_is_listed_and_none_runs_inline_code() -> None:
    assert sorted(p.name for p in UI_DIR.iterdir()) == sorted(ASSETS)
    html = (UI_DIR / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S):
        assert tag.strip() == "", "inline script"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"\sstyle\s*=", html) and "<style" not in html, "inline style"
    for name in ("app.js", "schedule.js"):
        source = (UI_DIR / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{name} uses {sink}"
        # The token is read from the fragment and sent in a header, never in a URL's query.
        assert "?token=" not in source and "&token=" not in source
