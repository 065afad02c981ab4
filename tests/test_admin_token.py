"""The admin token: in a header, or swapped for a derived cookie after one visit; never in a URL or a log line."""

from __future__ import annotations

import json
import logging

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from server.admin import COOKIE, cookie_value
from server.app import loggable_uri


def fetch(port: int, path: str, **kwargs):
    request = HTTPRequest(f"http://127.0.0.1:{port}{path}", follow_redirects=False, **kwargs)
    return AsyncHTTPClient().fetch(request, raise_error=False)


@pytest.mark.gen_test
@pytest.mark.parametrize("name", ["token", "%74oken", "to%6Ben", "%74%6f%6b%65%6e"])
@pytest.mark.parametrize("path", ["/admin", "/admin/api/counts"])
async def test_a_token_in_the_url_in_any_encoding_is_swapped_for_a_derived_cookie(
    http_server, http_port, config, name, path
):
    first = await fetch(http_port, f"{path}?{name}={config.admin_token}&view=compact")
    assert first.code == 303 and first.headers["Location"] == f"{path}?view=compact"
    cookie = first.headers["Set-Cookie"]
    assert config.admin_token not in cookie and cookie_value(config.admin_token) in cookie
    assert "Secure" not in cookie  # plain HTTP here
    again = await fetch(http_port, path, headers={"Cookie": cookie.split(";")[0]})
    assert again.code == 200


@pytest.mark.gen_test
async def test_the_cookie_is_secure_behind_an_https_proxy(http_server, http_port, config):
    first = await fetch(http_port, f"/admin?token={config.admin_token}", headers={"X-Forwarded-Proto": "https"})
    assert first.code == 303 and "Secure" in first.headers["Set-Cookie"]


@pytest.mark.gen_test
async def test_a_cookie_holding_the_token_itself_opens_nothing(http_server, http_port, config):
    response = await fetch(http_port, "/admin/api/counts", headers={"Cookie": f"{COOKIE}={config.admin_token}"})
    assert response.code == 403


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("token=SECRET", "token=%E2%80%A6"),
        ("%74oken=SECRET", "token=%E2%80%A6"),
        ("to%6Ben=SECRET&x=1", "token=%E2%80%A6&x=1"),
        ("TOKEN=SECRET", "TOKEN=%E2%80%A6"),
        ("a=1&token=SECRET&token=SECRET2", "a=1&token=%E2%80%A6&token=%E2%80%A6"),
    ],
)
def test_no_encoding_of_token_reaches_the_log_line(query, shown):
    logged = loggable_uri("/admin", query)
    assert "SECRET" not in logged and logged == "/admin?" + shown


@pytest.mark.gen_test
async def test_the_access_log_never_holds_the_token(http_server, http_port, config, caplog):
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        await fetch(http_port, f"/admin?%74oken={config.admin_token}")
        await fetch(http_port, f"/admin?to%6Ben={config.admin_token[::-1]}")
    assert caplog.records and config.admin_token not in caplog.text and config.admin_token[::-1] not in caplog.text


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/client/%00", "/client/app.js%00", "/vendor/msgpack/%00x", "/wheels/x%00.whl"])
async def test_static_routes_answer_a_nul_with_400(http_server, http_port, path):
    assert (await fetch(http_port, path)).code == 400


@pytest.mark.gen_test
@pytest.mark.config(public_origin="https://study.example.org")
async def test_with_a_public_origin_the_package_index_ignores_the_host_header(http_server, http_port):
    headers = {"Accept": "application/vnd.pypi.simple.v1+json", "Host": "evil.example"}
    response = await fetch(http_port, "/simple/micropip/", headers=headers)
    urls = [f["url"] for f in json.loads(response.body)["files"]]
    assert urls and all(url.startswith("https://study.example.org/wheels/") for url in urls)


async def index_urls(port: int, host: str) -> tuple[int, list[str]]:
    headers = {"Accept": "application/vnd.pypi.simple.v1+json", "Host": host}
    response = await fetch(port, "/simple/micropip/", headers=headers)
    return response.code, ([f["url"] for f in json.loads(response.body)["files"]] if response.code == 200 else [])


@pytest.mark.gen_test
async def test_without_a_public_origin_a_forged_host_gets_the_configured_address(http_server, http_port):
    for forged in ("evil.example", f"evil.example:{http_port}", "127.0.0.1:1", "localhost"):
        code, urls = await index_urls(http_port, forged)
        assert code == 200 and urls and all(u.startswith(f"http://127.0.0.1:{http_port}/wheels/") for u in urls)


@pytest.mark.gen_test
async def test_without_a_public_origin_each_name_of_the_loopback_address_is_kept(http_server, http_port):
    for name in (f"localhost:{http_port}", f"127.0.0.1:{http_port}", f"[::1]:{http_port}"):
        code, urls = await index_urls(http_port, name)
        assert code == 200 and urls and all(u.startswith(f"http://{name}/wheels/") for u in urls)


@pytest.mark.gen_test
@pytest.mark.config(host="0.0.0.0")
async def test_listening_everywhere_any_name_at_the_port_is_taken_and_others_refused(http_server, http_port):
    code, urls = await index_urls(http_port, f"lab-pc.local:{http_port}")
    assert code == 200 and urls and all(u.startswith(f"http://lab-pc.local:{http_port}/wheels/") for u in urls)
    for other in ("evil.example", f"evil.example:{http_port + 1}"):
        assert (await index_urls(http_port, other))[0] == 421
