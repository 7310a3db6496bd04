"""Small WARC files written by the tests themselves, through warcio (an independent writer)."""

from __future__ import annotations

import uuid
from io import BytesIO
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

PROSE = ("The river valley has been farmed for centuries, and the old stone bridges still carry the roads "
         "between the villages. Each spring the meadows flood and the farmers wait for the water to fall "
         "before they sow. Visitors come for the walking paths, the small museums and the long summer "
         "evenings, when the light stays on the hills until late. The local school keeps a record of the "
         "floods going back two hundred years, written by the teachers in a bound ledger.")


def html_page(text: str) -> bytes:
    paragraphs = "".join(f"<p>{p}</p>" for p in text.split("\n") if p.strip())
    return f"<html><head><title>t</title></head><body><article>{paragraphs}</article></body></html>".encode()


def write_warc(path: Path, pages: list[tuple[str, str, bytes]]) -> Path:
    """(url, WARC-Date, HTML body) responses, one gzip member each; record ids derive from the URL."""
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, date, body in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            record_id = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"
            writer.write_record(writer.create_warc_record(url, "response", payload=BytesIO(body), http_headers=http,
                                                          warc_headers_dict={"WARC-Date": date,
                                                                             "WARC-Record-ID": record_id}))
    return path
