"""`tailproxy ui` against a live agent on the local tailnet (issue 13), in a real headless
Chromium: the page loads with the printed URL, shows a connection a program under tailproxy
holds (with its bytes, live), and switching the exit node from the page changes the address the
internet host sees (this host's own over a direct link, then the exit node's, then this host's
again once cleared). Refused: without the token, from another uid (with the token), and from
the tailnet peer. A screenshot goes to build/ (never into the repository)."""
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from helpers import REPO, direct_link_to_the_internet, py, readline, run_tp
from test_agent import AGENT, ident, popen_tpa  # noqa: F401 (fixture)

pytestmark = pytest.mark.tailnet

FOREIGN_UID = 65534


def get(url: str, headers=None) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        return opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


def browser(tmp) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
              f"--user-data-dir={tmp}/chromium", "--no-proxy-server"):
        opts.add_argument(a)
    os.environ["SE_OFFLINE"] = "true"       # no Selenium Manager download: Debian's driver
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def test_ui_page_live_connection_and_exit_switch(ident, testnet, short_tmp):
    with direct_link_to_the_internet(testnet) as local:
        check_ui(ident, testnet, short_tmp, local)


def check_ui(ident, testnet, short_tmp, local):
    state, host = ident
    inet = testnet["internet"]
    exits = {e["name"]: e for e in testnet["exit_nodes"]}
    dest = f"{inet['ipv4']}:{inet['http_port']}"
    program = py(f"""
        import json, socket, sys, urllib.request
        held = socket.create_connection(({inet['ipv4']!r}, {inet['http_port']}), timeout=20)
        held.sendall(b"GET / HTTP/1.1\\r\\n" + b"X-Pad: " + b"x" * 3000 + b"\\r\\n")
        op = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
        print("READY", flush=True)
        for _ in iter(sys.stdin.readline, ""):
            try:
                print(json.loads(op.open("http://{dest}/", timeout=10).read())["client"],
                      flush=True)
            except Exception as e:
                print("ERROR", type(e).__name__, flush=True)
    """)
    # --proxy-all: the agent dials the internet host itself (directly, over the link), so the
    # connection is its to list, with live byte counts
    p = popen_tpa(ident, "--linger", "0", "--proxy-all", *program,
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)
    driver = None

    def fetch():
        p.stdin.write("go\n")
        p.stdin.flush()
        return readline(p.stdout, 30).strip()
    try:
        assert readline(p.stdout, 90).strip() == "READY"
        assert fetch() == local
        cp = run_tp("--hostname", host, "ui", "--no-browser", env=AGENT, timeout=60)
        assert cp.returncode == 0, cp.stderr
        url = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", cp.stdout).group(0)
        base, port = url.split("?")[0], int(url.split(":")[2].split("/")[0])
        # refused: no token, a wrong one, another uid with the right one, the tailnet peer
        assert get(base) == 401 and get(base + "?token=x") == 401
        other = subprocess.run(["/usr/bin/python3", "-c", f"""
import urllib.request, urllib.error
op = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
try:
    print(op.open({url!r}, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""], user=FOREIGN_UID, capture_output=True, text=True, timeout=30)
        assert other.stdout.strip() == "403", (other.stdout, other.stderr)
        top = json.loads(run_tp("top", "--once", "--json", env=AGENT).stdout)
        [me] = [a for a in top["agents"] if a["hostname"] == host]
        pp = testnet["peers"]["peer"]
        from_peer = subprocess.run(
            ["ip", "netns", "exec", pp["netns"], "curl", "-sS", "-m", "5", "-o", "/dev/null",
             "-w", "%{http_code}", "--socks5-hostname", pp["socks5"],
             f"http://{me['node_name']}:{port}/?token={url.split('token=')[1]}"],
            capture_output=True, text=True)
        assert from_peer.returncode != 0 and from_peer.stdout in ("", "000"), from_peer

        driver = browser(short_tmp)
        driver.get(url)
        wait = WebDriverWait(driver, 30)
        row = wait.until(lambda d: d.find_elements(
            By.CSS_SELECTOR, f'#connections tbody tr[data-dialled="{dest}"]'))[0]
        assert row.get_attribute("data-route") == "direct"
        up = row.find_elements(By.TAG_NAME, "td")[5].text
        assert up.endswith("K") and float(up[:-1]) >= 2.9, up        # live, before it ends
        assert row.find_elements(By.CSS_SELECTOR, "svg.spark polyline")
        assert "token" not in driver.current_url        # exchanged for a cookie
        os.makedirs(os.path.join(REPO, "build"), exist_ok=True)
        driver.save_screenshot(os.path.join(REPO, "build", "ui-e2e.png"))
        target = exits["exit"]["fqdn"].rstrip(".")
        select = wait.until(lambda d: (lambda s: s if target in
                                       [o.get_attribute("value") for o in s.options] else None)(
            Select(d.find_element(By.ID, "exit-select"))))
        select.select_by_value(target)
        driver.find_element(By.ID, "exit-set").click()
        wait.until(lambda d: d.find_element(By.ID, "exit-status").text == f"using {target}")
        assert fetch() == exits["exit"]["egress_ipv4"]
        driver.find_element(By.ID, "exit-clear").click()
        wait.until(lambda d: d.find_element(By.ID, "exit-status").text == "cleared")
        assert fetch() == local
    finally:
        if driver is not None:
            driver.quit()
        p.stdin.close()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
