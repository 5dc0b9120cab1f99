"""A stock tus client (tuspy) uploading a file to Outpost, as a client developer would.

Usage:
    tus_upload.py BASE TOKEN FILE CHUNK [--stop-after BYTES] [--resume URL] [--checksum]

Begins an upload of FILE (or, with --resume, goes on with the upload at URL from the offset
the server reports), sending CHUNK bytes per request. With --stop-after it exits abruptly
(os._exit, as a killed client would) once at least BYTES have been acknowledged. With
--checksum every chunk carries Upload-Checksum (tuspy sends sha1). Prints one JSON line:
the upload URL, the offset it started from and the offset it reached.
"""

import argparse
import json
import os
import sys

from tusclient import client

p = argparse.ArgumentParser()
p.add_argument("base")
p.add_argument("token")
p.add_argument("file")
p.add_argument("chunk", type=int)
p.add_argument("--stop-after", type=int)
p.add_argument("--resume")
p.add_argument("--checksum", action="store_true")
a = p.parse_args()

c = client.TusClient(a.base + "/v1/uploads", headers={"Authorization": "Bearer " + a.token})
up = c.uploader(
    a.file,
    url=a.resume,
    chunk_size=a.chunk,
    metadata={"filename": os.path.basename(a.file), "filetype": "application/octet-stream"},
    upload_checksum=a.checksum,
)
if up.url is None:
    up.set_url(up.create_url())
started = up.offset
size = up.get_file_size()
while up.offset < size:
    up.upload_chunk()
    if a.stop_after is not None and up.offset >= a.stop_after:
        print(json.dumps({"url": up.url, "started": started, "offset": up.offset}), flush=True)
        sys.stdout.flush()
        os._exit(0)
print(json.dumps({"url": up.url, "started": started, "offset": up.offset}), flush=True)
