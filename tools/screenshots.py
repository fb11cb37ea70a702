#!/usr/bin/env python3
"""Refresh the README's pictures of `tailproxy top` and `tailproxy ui` (docs/screenshots/):

    python -m tailproxy.testnet --exit-nodes 2 -- python tools/screenshots.py

Inside the local test tailnet it runs a program under tailproxy (through the exit node: a
download in progress, a held connection, a finished one; a port exported with an idle
timeout), then captures `tailproxy top` in an 80x24 tmux pane (saved as SVG through rich) and
the ui page in headless Chromium (PNG). Needs tmux, chromium, chromium-driver and selenium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "screenshots")
HOST = "demo"


def tp(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tailproxy", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def main() -> int:
    with open(os.environ["TESTNET_INFO"]) as f:
        net = json.load(f)
    inet = net["internet"]
    tmp = tempfile.mkdtemp(prefix="tp-shot-", dir="/tmp")
    end = os.path.join(tmp, "end")
    program = textwrap.dedent(f"""
        import http.server, os, socket, threading, time
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"hi")
            def log_message(self, *a): pass
        srv = http.server.HTTPServer(("127.0.0.1", 8080), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        done = socket.create_connection(({inet['ipv4']!r}, {inet['http_port']}))
        done.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); done.recv(65536); done.close()
        held = socket.create_connection(({inet['ipv4']!r}, {inet['http_port']}))
        held.sendall(b"GET / HTTP/1.1\\r\\n")
        print("READY", flush=True)
        while not os.path.exists({end!r}):
            time.sleep(0.1)
    """)
    demo = os.path.join(tmp, "demo.py")
    with open(demo, "w") as f:
        f.write(program)
    p = subprocess.Popen([sys.executable, "-m", "tailproxy", "--state-dir",
                          os.path.join(tmp, "state"), "--hostname", HOST, "--linger", "0",
                          "--exit-node", "exit", "--export-listeners",
                          "--export-idle-timeout", "600", "python3", demo],
                         stdout=subprocess.PIPE, text=True)
    sock = os.path.join(tmp, "tmux.sock")
    try:
        if p.stdout.readline().strip() != "READY":
            raise SystemExit("the demo program did not start")
        time.sleep(2)
        os.makedirs(OUT, exist_ok=True)
        shoot_top(sock)
        shoot_ui(tmp)
        print(f"wrote {OUT}/top.svg and {OUT}/ui.png")
        return 0
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)
        open(end, "w").close()
        p.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def shoot_top(sock: str) -> None:
    from rich.console import Console
    from rich.text import Text
    env = " ".join(f"{k}={v}" for k, v in os.environ.items()
                   if k in ("PYTHONPATH", "XDG_RUNTIME_DIR", "HOME", "PATH"))
    subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-s", "top", "-x", "80", "-y", "24",
                    f"env {env} TERM=xterm-256color {sys.executable} -m tailproxy top"],
                   check=True)
    time.sleep(4)       # two looks: rates need a previous one
    screen = subprocess.run(["tmux", "-S", sock, "capture-pane", "-p", "-e", "-t", "top"],
                            capture_output=True, text=True, check=True).stdout
    console = Console(record=True, width=80, file=open(os.devnull, "w"))
    console.print(Text.from_ansi(screen))
    console.save_svg(os.path.join(OUT, "top.svg"), title="tailproxy top")


def shoot_ui(tmp: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    out = tp("--hostname", HOST, "ui", "--no-browser")
    url = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", out.stdout).group(0)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,800",
              f"--user-data-dir={tmp}/chromium", "--no-proxy-server"):
        opts.add_argument(a)
    os.environ["SE_OFFLINE"] = "true"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#connections tbody tr"))
        time.sleep(3)       # a few points of sparkline
        driver.save_screenshot(os.path.join(OUT, "ui.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
