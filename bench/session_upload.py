#!/usr/bin/env python3
"""Uploads FILE through an artifactstore upload session in CHUNK_MIB pieces
over one persistent connection, and prints the elapsed seconds.

curl either starts a process per chunk or streams through a 64 KiB buffer;
both measure the client more than the server. Standard library only.

    session_upload.py URL FILE SHA256_HEX [CHUNK_MIB]
"""
import http.client
import sys
import time
import urllib.parse

url, path, sha = sys.argv[1], sys.argv[2], sys.argv[3]
chunk = int(sys.argv[4] if len(sys.argv) > 4 else 16) << 20
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)

start = time.monotonic()
conn.request("POST", "/uploads")
resp = conn.getresponse()
resp.read()
if resp.status != 202:
    sys.exit(f"POST /uploads: {resp.status}")
location = resp.getheader("location")
offset = 0
with open(path, "rb") as f:
    while True:
        data = f.read(chunk)
        if not data:
            break
        conn.request("PATCH", location, body=data, headers={"Upload-Offset": str(offset)})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            sys.exit(f"PATCH at {offset}: {resp.status}")
        offset += len(data)
conn.request("PUT", f"{location}?digest=sha256:{sha}")
resp = conn.getresponse()
body = resp.read()
if resp.status not in (200, 201):
    sys.exit(f"PUT: {resp.status} {body!r}")
print(f"{time.monotonic() - start:.3f}")
