#!/usr/bin/env python3
"""A local stand-in for Kosli, for hack/demo.sh: it answers the calls the
operator's reporter makes (docs/kosli-api.md) the way Kosli does, and prints
one line per report it receives: how many pods and artifacts, and what changed
since the environment's last report.

  GET /api/v2/environments/{org}/{env}             200 with the environment, or 404
  PUT /api/v2/environments/{org}                   creates a K8S environment: 201
  PUT /api/v2/environments/{org}/{env}/report/K8S  stores the report: 201

Every request must carry `Authorization: Bearer <token>` (else 401) and every
body a Content-Length (as the Kosli CLI sends it). Anything else gets Kosli's
404. It listens on 127.0.0.1 only, on a free port it writes to --port-file, and
appends each report's summary as a JSON line to --reports (what the demo waits
on). Python 3 standard library only.
"""

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEX64 = re.compile(r"^[a-f0-9]{64}$")


def say(line):
    print(f"kosli: {line}", flush=True)


def short(digest):
    return digest[:12]


def count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def names(items, limit=4):
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f", +{len(items) - limit} more" if len(items) > limit else "")


class Kosli:
    def __init__(self, org, token, reports_path):
        self.org = org
        self.token = token
        self.reports_path = reports_path
        self.lock = threading.Lock()
        self.environments = {}
        self.last = {}  # env -> {pod name: {artifact name: digest}}
        self.count = 0

    def summarise(self, env, body):
        """The report's line, and its summary record."""
        pods = {}
        for artifact in body["artifacts"]:
            pods[f'{artifact["namespace"]}/{artifact["podName"]}'] = artifact["digests"]
        fingerprints = {d for digests in pods.values() for d in digests.values()}
        before = self.last.get(env)
        self.last[env] = pods
        self.count += 1
        line = (
            f"report #{self.count} for '{env}': {count(len(pods), 'pod')}, "
            f"{count(len(fingerprints), 'artifact')}"
        )
        if before is None:
            line += " (the first)"
        else:
            added = pods.keys() - before.keys()
            gone = before.keys() - pods.keys()
            old = {d for digests in before.values() for d in digests.values()}
            changes = []
            if added:
                changes.append(f"+{count(len(added), 'pod')} ({names(added)})")
            if gone:
                changes.append(f"-{count(len(gone), 'pod')} ({names(gone)})")
            if fingerprints - old:
                changes.append("new artifact " + ", ".join(short(d) for d in sorted(fingerprints - old)))
            if old - fingerprints:
                changes.append("artifact gone " + ", ".join(short(d) for d in sorted(old - fingerprints)))
            line += "; since the last: " + ("; ".join(changes) if changes else "nothing changed (a heartbeat)")
        record = {
            "n": self.count,
            "environment": env,
            "pods": len(pods),
            "artifacts": len(fingerprints),
            "podNames": sorted(pods),
            "fingerprints": sorted(fingerprints),
        }
        return line, record


def handler_for(kosli):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "kosli-standin"

        def log_message(self, *args):
            pass  # one line per report is printed instead

        def answer(self, status, value):
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def body(self):
            length = self.headers.get("Content-Length")
            if length is None:
                return None
            return self.rfile.read(int(length))

        def refused(self):
            if self.headers.get("Authorization") != f"Bearer {kosli.token}":
                self.answer(401, {"message": "Invalid API token"})
                return True
            return False

        def segments(self):
            return self.path.split("?", 1)[0].strip("/").split("/")

        def do_GET(self):
            if self.refused():
                return
            match self.segments():
                case ["api", "v2", "environments", org, env] if org == kosli.org:
                    with kosli.lock:
                        found = kosli.environments.get(env)
                    if found is None:
                        self.answer(404, {"message": f"Environment named '{env}' does not exist for organization '{org}'"})
                    else:
                        self.answer(200, found)
                case _:
                    self.answer(404, {"message": "Not Found"})

        def do_PUT(self):
            raw = self.body()
            if self.refused():
                return
            if raw is None:
                self.answer(411, {"message": "A request body must declare its Content-Length"})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self.answer(400, {"message": "Input payload validation failed"})
                return
            match self.segments():
                case ["api", "v2", "environments", org] if org == kosli.org:
                    name, kind = body.get("name"), body.get("type")
                    with kosli.lock:
                        kosli.environments[name] = {
                            "name": name,
                            "type": kind,
                            "description": body.get("description", ""),
                            "last_reported_at": None,
                            "state": None,
                        }
                    say(f"created environment '{name}' ({kind})")
                    self.answer(201, "OK")
                case ["api", "v2", "environments", org, env, "report", "K8S"] if org == kosli.org:
                    artifacts = body.get("artifacts") if isinstance(body, dict) else None
                    if not isinstance(artifacts, list) or any(
                        not all(HEX64.match(d or "") for d in a.get("digests", {}).values())
                        for a in artifacts
                    ):
                        self.answer(400, {"message": "Input payload validation failed"})
                        return
                    with kosli.lock:
                        environment = kosli.environments.get(env)
                        if environment is None:
                            self.answer(404, {"message": f"Environment named '{env}' does not exist for organization '{org}'"})
                            return
                        environment["last_reported_at"] = time.time()
                        line, record = kosli.summarise(env, body)
                        with open(kosli.reports_path, "a", encoding="utf-8") as out:
                            out.write(json.dumps(record) + "\n")
                    say(line)
                    self.answer(201, "OK")
                case _:
                    self.answer(404, {"message": "Not Found"})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--org", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--reports", required=True)
    args = parser.parse_args()

    kosli = Kosli(args.org, args.token, args.reports)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(kosli))
    server.daemon_threads = True
    # TERM (the demo's clean-up) and INT (Ctrl-C) end it quietly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    with open(args.port_file + ".tmp", "w", encoding="utf-8") as out:
        out.write(str(server.server_address[1]))
    # Renamed into place, so the demo never reads a half-written port.
    os.replace(args.port_file + ".tmp", args.port_file)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
