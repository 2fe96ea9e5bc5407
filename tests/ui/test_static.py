"""The dashboard's files as the API serves them, on SQLite and Postgres: where they are, the headers that make
them safe, and the rules the shipped code keeps (no inline script, no markup from data, no key in a URL)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.routers.ui import CONTENT_SECURITY_POLICY, UI_DIR

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [
    "index.html",
    "app.js",
    "chart.js",
    "app.css",
    "vendor/js-yaml-4.1.0.min.js",
    "vendor/js-yaml-LICENSE",
]


def test_root_redirects_to_the_dashboard(client: TestClient):
    resp = client.get("/", follow_redirects=False)
    assert resp.status_code == 307
    assert resp.headers["location"] == "/ui/"


@pytest.mark.parametrize("path", ["/ui/", "/ui/index.html", "/ui/app.js", "/ui/chart.js", "/ui/app.css"])
def test_ui_files_carry_a_csp_without_inline_script_or_eval(client: TestClient, path: str):
    resp = client.get(path)
    assert resp.status_code == 200
    csp = resp.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    expected = {"html": "text/html", "js": "javascript", "css": "text/css"}[
        path.rsplit(".", 1)[-1] if "." in path else "html"
    ]
    assert expected in resp.headers["content-type"]


def test_ui_missing_file_is_a_404_with_the_same_headers(client: TestClient):
    resp = client.get("/ui/nope.js")
    assert resp.status_code == 404
    assert resp.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_ui_files_need_no_key_but_the_api_still_does(client: TestClient, alice: dict[str, str]):
    assert client.get("/ui/app.js").status_code == 200
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers=alice).status_code == 200


def test_index_loads_only_files_of_its_own_origin():
    html = (UI_DIR / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts
    for attrs, body in scripts:
        assert body.strip() == "" and 'src="' in attrs, "no inline script: the CSP would refuse it"
        assert "//" not in attrs, "no script from another origin (no CDN)"
    assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
    assert "style=" not in html


@pytest.mark.parametrize("name", ["app.js", "chart.js"])
def test_dashboard_code_never_turns_data_into_markup_or_code(name: str):
    code = (UI_DIR / name).read_text()
    code = re.sub(r"//[^\n]*", "", code)  # comments may name what is forbidden
    for banned in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "EventSource",
        "localStorage",
        "document.cookie",
    ):
        assert banned not in code, f"{name} uses {banned}"


def test_the_key_travels_only_in_the_authorization_header():
    code = (UI_DIR / "app.js").read_text()
    uses = [line.strip() for line in code.splitlines() if "apiKey()" in line and "const apiKey" not in line]
    assert uses and all("Authorization" in u or u.startswith("if (!apiKey())") for u in uses), uses


def test_vendored_library_keeps_its_licence():
    assert "MIT" in (UI_DIR / "vendor" / "js-yaml-LICENSE").read_text()
    assert "@license MIT" in (UI_DIR / "vendor" / "js-yaml-4.1.0.min.js").read_text()[:200]


def test_a_built_wheel_ships_the_dashboard(tmp_path: Path):
    """A non-editable install serves the same files: they are package data."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rlft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"service/ui/{f}" for f in SHIPPED} <= names


@pytest.mark.parametrize(
    "path", ["/ui/%2e%2e/routers/ui.py", "/ui/..%2fapp.py", "/ui/%2e%2e/%2e%2e/pyproject.toml"]
)
def test_ui_serves_nothing_outside_its_folder(client: TestClient, path: str):
    resp = client.get(path)
    assert resp.status_code == 404
    assert "def " not in resp.text and "[project]" not in resp.text
