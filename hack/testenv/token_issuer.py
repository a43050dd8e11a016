#!/usr/bin/env python3
"""Loopback token issuer for docker-registry's `auth: token:` flow (Python 3 stdlib only).

GET /token?service=S&scope=repository:NAME:pull,push  with HTTP Basic credentials
POST /token  (OAuth2 form: grant_type=password&username=..&password=..&service=..&scope=..)
  -> {"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": ...}
GET /healthz -> 200 "ok"

The JWT is RS256-signed with --key. Its header carries `kid` = the libtrust fingerprint of
the public key in --cert, which is how docker-registry 2.x finds a trusted key: it indexes
the certificates of `rootcertbundle` by that fingerprint (x5c and jwk headers are the other
two options it accepts). RSA signing is done by hand (PKCS#1 v1.5) so no crypto package is
needed. Valid credentials get every action they ask for; anything else gets 401.
"""
import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# --------------------------------------------------------------------------- DER/PEM
def pem_blocks(text, label):
    pat = r"-----BEGIN %s-----(.*?)-----END %s-----" % (label, label)
    return [base64.b64decode("".join(m.split())) for m in re.findall(pat, text, re.S)]


def der_next(buf, pos):
    """Return (tag, content_start, end) of the DER element starting at pos."""
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    return tag, pos, pos + length


def der_children(buf, start, end):
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = der_next(buf, pos)
        out.append((tag, pos, cstart, cend))
        pos = cend
    return out


def load_rsa_private_key(path):
    text = open(path, encoding="ascii").read()
    pkcs8 = pem_blocks(text, "PRIVATE KEY")
    if pkcs8:
        der = pkcs8[0]
        _, s, e = der_next(der, 0)
        # PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING }
        octet = der_children(der, s, e)[2]
        der = der[octet[2]:octet[3]]
    else:
        blocks = pem_blocks(text, "RSA PRIVATE KEY")
        if not blocks:
            sys.exit("token_issuer: no RSA private key in %s" % path)
        der = blocks[0]
    _, s, e = der_next(der, 0)
    ints = [int.from_bytes(der[c[2]:c[3]], "big") for c in der_children(der, s, e)]
    # RSAPrivateKey ::= SEQUENCE { version, n, e, d, p, q, dp, dq, qinv }
    return {"n": ints[1], "e": ints[2], "d": ints[3]}


def cert_spki_der(path):
    """DER bytes of the SubjectPublicKeyInfo of the first certificate in path."""
    der = pem_blocks(open(path, encoding="ascii").read(), "CERTIFICATE")[0]
    _, s, e = der_next(der, 0)
    tbs = der_children(der, s, e)[0]
    fields = der_children(der, tbs[2], tbs[3])
    # tbsCertificate: [0] version (optional), serial, sigAlg, issuer, validity, subject, spki
    idx = 6 if fields[0][0] == 0xA0 else 5
    f = fields[idx]
    return der[f[1]:f[3]]


def libtrust_key_id(spki_der):
    """libtrust fingerprint: base32 of the first 240 bits of sha256(SPKI), in groups of 4."""
    b32 = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


# --------------------------------------------------------------------------- JWT
SHA256_DIGEST_INFO = binascii.unhexlify("3031300d060960864801650304020105000420")


def b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def rs256_sign(key, msg):
    k = (key["n"].bit_length() + 7) // 8
    t = SHA256_DIGEST_INFO + hashlib.sha256(msg).digest()
    em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    return pow(int.from_bytes(em, "big"), key["d"], key["n"]).to_bytes(k, "big")


def make_jwt(key, kid, claims):
    header = {"typ": "JWT", "alg": "RS256", "kid": kid}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    return signing_input + "." + b64url(rs256_sign(key, signing_input.encode()))


def parse_scope(scope):
    """'repository:a/b:pull,push' -> {'type','name','actions'}; the name may itself hold ':'."""
    typ, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not typ or not name:
        return None
    typ = typ.split("(", 1)[0]  # drop a resource class like repository(plugin)
    return {"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]}


# --------------------------------------------------------------------------- HTTP
class Handler(BaseHTTPRequestHandler):
    server_version = "testenv-token-issuer/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))

    def reply(self, code, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes)
                         else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def unauthorized(self, why):
        self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": why}]},
                   [("WWW-Authenticate", 'Basic realm="testenv-token-issuer"')])

    def check(self, user, password):
        cfg = self.server.cfg
        return (user is not None and hmac.compare_digest(user, cfg.user) and
                hmac.compare_digest(password or "", cfg.password))

    def issue(self, user, service, scopes):
        cfg = self.server.cfg
        if service and service != cfg.service:
            return self.reply(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
        now = int(time.time())
        access = [a for a in (parse_scope(s) for s in scopes) if a]
        claims = {"iss": cfg.issuer, "sub": user, "aud": cfg.service, "exp": now + cfg.ttl,
                  "nbf": now - 5, "iat": now, "jti": secrets.token_hex(12), "access": access}
        tok = make_jwt(self.server.key, self.server.kid, claims)
        self.reply(200, {"token": tok, "access_token": tok, "expires_in": cfg.ttl,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            return self.reply(200, b"ok")
        if url.path != "/token":
            return self.reply(404, b"not found")
        q = urllib.parse.parse_qs(url.query)
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("basic "):
            return self.unauthorized("credentials required")
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return self.unauthorized("malformed credentials")
        if not self.check(user, password):
            return self.unauthorized("bad credentials")
        scopes = [s for v in q.get("scope", []) for s in v.split(" ")]
        self.issue(user, q.get("service", [""])[0], scopes)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            return self.reply(404, b"not found")
        n = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        if form.get("grant_type", [""])[0] != "password":
            return self.reply(400, {"error": "unsupported_grant_type"})
        user, password = form.get("username", [None])[0], form.get("password", [None])[0]
        if not self.check(user, password):
            return self.unauthorized("bad credentials")
        scopes = [s for v in form.get("scope", []) for s in v.split(" ")]
        self.issue(user, form.get("service", [""])[0], scopes)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True, help="PEM RSA private key that signs tokens")
    p.add_argument("--cert", required=True, help="PEM certificate of that key (in rootcertbundle)")
    p.add_argument("--issuer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--ttl", type=int, default=300)
    p.add_argument("--credentials-file", required=True,
                   help="file holding USER:PASSWORD on one line (kept off the command line)")
    cfg = p.parse_args()
    if cfg.listen not in ("127.0.0.1", "::1", "localhost"):
        sys.exit("token_issuer: refusing to listen on a non-loopback address")
    cfg.user, _, cfg.password = open(cfg.credentials_file, encoding="utf-8").read().strip().partition(":")
    srv = ThreadingHTTPServer((cfg.listen, cfg.port), Handler)
    srv.daemon_threads = True
    srv.cfg = cfg
    srv.key = load_rsa_private_key(cfg.key)
    srv.kid = libtrust_key_id(cert_spki_der(cfg.cert))
    sys.stderr.write("token issuer on http://%s:%d kid=%s pid=%d\n"
                     % (cfg.listen, srv.server_address[1], srv.kid, os.getpid()))
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
