"""gzip for large responses, when the client accepts it (``Accept-Encoding: gzip``).

A big job's report is megabytes of JSON (about 100 bytes per chunk) that gzip shrinks to a
third or less; on anything slower than loopback, sending it is most of what a client waits for.
Streamed responses (files, NDJSON) are left alone: compressing them would mean holding them
whole, or a compressor per stream; so are small ones, HEAD, and what is already encoded.
"""

from __future__ import annotations

import gzip

from flask import Flask, Request, Response, request

# A body that fits in one TCP segment (an Ethernet MSS is 1460 bytes) is sent in one packet
# compressed or not: gzip would only cost CPU and its ~20 bytes of header and trailer.
MIN_BYTES = 1400
# Level 1. On a 10.4 MB report of 17,000 chunk results (keywords drawn at random from 5,000
# made-up words, so it compresses worse than prose): level 1 takes 71 ms to 29% of the size,
# level 3 85 ms to 27%, level 6 134 ms to 25%, level 9 833 ms to 24%. In a gevent worker the
# compression holds every other request on that worker, so the cheapest level wins.
LEVEL = 1
COMPRESSIBLE = ("text/", "application/json", "application/javascript", "image/svg+xml")


def register(app: Flask) -> None:
    @app.after_request
    def _gzip(response: Response) -> Response:
        return compress(request, response)


def compress(req: Request, response: Response) -> Response:
    """``response`` gzipped if it is worth it and ``req`` accepts it; else as it was."""
    if not _eligible(response):
        return response
    # A body this small goes out as it is to every client: it depends on no request header.
    body = response.get_data()
    if len(body) < MIN_BYTES:
        return response
    # The answer depends on Accept-Encoding from here on, whatever this client sent.
    response.vary.add("Accept-Encoding")
    if req.method == "HEAD" or req.accept_encodings["gzip"] <= 0:
        return response
    response.set_data(gzip.compress(body, compresslevel=LEVEL, mtime=0))
    response.headers["Content-Encoding"] = "gzip"
    # A strong ETag names these bytes; the compressed ones are other bytes.
    etag, weak = response.get_etag()
    if etag and not weak:
        response.set_etag(etag + "-gzip")
    return response


def _eligible(response: Response) -> bool:
    if response.direct_passthrough or response.is_streamed:
        return False
    if response.status_code < 200 or response.status_code in (204, 206, 304):
        return False
    if "Content-Encoding" in response.headers or "Content-Range" in response.headers:
        return False
    if "no-transform" in response.headers.get("Cache-Control", ""):
        return False
    mimetype = response.mimetype or ""
    return mimetype.startswith(COMPRESSIBLE) or mimetype.endswith("+json")
