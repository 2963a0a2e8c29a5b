#!/usr/bin/env python3
"""The catalog service of the mirroring scenario (seed 000): GET /items and GET /items/<id>.

Version v1 serves id, color, department, name and price; v2 adds imageUrl. Each request is
logged on stderr the way the seed's catalog logs it: method, Host, path, status, length.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ITEMS = [
    {"id": 1, "color": "amber", "department": "Eyewear", "name": "Elinor Glasses", "price": "282.00"},
    {"id": 2, "color": "cyan", "department": "Clothing", "name": "Atlas Shirt", "price": "127.00"},
    {"id": 3, "color": "teal", "department": "Clothing", "name": "Small Metal Shoes", "price": "232.00"},
    {"id": 4, "color": "red", "department": "Watches", "name": "Red Dragon Watch", "price": "232.00"},
]
IMAGE_URL = "http://lorempixel.com/640/480"


def catalog(version):
    if version == "v2":
        return [dict(item, imageUrl=IMAGE_URL) for item in ITEMS]
    return [dict(item) for item in ITEMS]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "catalog"
    sys_version = ""
    items = []

    def reply(self, status, obj):
        body = json.dumps(obj, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        print(f"{self.command} {self.headers.get('Host', '-')} {self.path} {status} {len(body)}",
              file=sys.stderr, flush=True)

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/items":
            return self.reply(200, self.items)
        if path.startswith("/items/"):
            for item in self.items:
                if str(item["id"]) == path[len("/items/"):]:
                    return self.reply(200, item)
        return self.reply(404, {"error": "not found", "path": self.path})

    do_HEAD = do_GET

    def log_message(self, *args):
        pass  # reply() logs in the seed's format instead


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--version", choices=["v1", "v2"], required=True)
    ap.add_argument("--port", type=int, default=3000)
    args = ap.parse_args()
    Handler.items = catalog(args.version)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
