#!/usr/bin/env python3
"""Uploads COUNT distinct random blobs of SIZE bytes with PUT /blobs/<digest>
over CONNECTIONS persistent connections (one thread each) and prints the
rate in blobs per second. Standard library only.

    small_blobs.py URL COUNT SIZE CONNECTIONS
"""
import hashlib
import http.client
import os
import sys
import threading
import time
import urllib.parse

url, count, size, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
u = urllib.parse.urlsplit(url)
salt = os.urandom(8)
blobs = [salt + i.to_bytes(8, "little") + os.urandom(max(size - 16, 0)) for i in range(count)]
digests = [hashlib.sha256(b).hexdigest() for b in blobs]


def worker(first):
    conn = http.client.HTTPConnection(u.hostname, u.port)
    for i in range(first, count, conns):
        conn.request("PUT", "/blobs/sha256:" + digests[i], body=blobs[i])
        resp = conn.getresponse()
        resp.read()
        if resp.status not in (200, 201):
            sys.exit(f"PUT answered {resp.status}")


start = time.monotonic()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"{count / (time.monotonic() - start):.0f}")
