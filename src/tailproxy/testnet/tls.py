"""Per-run CA and server certificate for the control server, made with the openssl CLI.

The control server is reached as https://198.18.0.1, so the leaf carries an IP SAN (no DNS
name is needed and nothing has to resolve). Clients trust the CA through SSL_CERT_FILE,
which Go's crypto/x509 honours on Linux; the host's trust store is never touched.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


@dataclass
class Certs:
    ca_cert: str
    cert: str
    key: str


def _openssl(*args: str, cwd: str) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()[-2000:]}")


def make_certs(out_dir: str, ip: str, days: int = 2) -> Certs:
    """CA (ca.pem) and a leaf for `ip` (server.pem, server.key) in out_dir; EC keys: fast."""
    os.makedirs(out_dir, exist_ok=True)
    d = out_dir
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", str(days),
             "-subj", "/CN=tailproxy testnet CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem", cwd=d)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key", cwd=d)
    _openssl("req", "-new", "-key", "server.key", "-subj", f"/CN={ip}", "-out", "server.csr", cwd=d)
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write(f"subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", "server.ext",
             "-out", "server.pem", cwd=d)
    return Certs(os.path.join(d, "ca.pem"), os.path.join(d, "server.pem"), os.path.join(d, "server.key"))
