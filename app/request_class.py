"""The app's request class: multipart uploads kept in memory, and a body that cannot be read refused with 400.

Uploads are never written to disk and their file names are never used: :class:`InMemoryRequest` keeps multipart
file parts in memory (Flask's ``MAX_CONTENT_LENGTH`` bounds their size). Decoding them is
:mod:`app.uploads`'s job.
"""

from __future__ import annotations

import io
import logging
from typing import IO

from flask import Request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import BadRequest

logger = logging.getLogger(__name__)

#: What reading a request body can raise from the server's input stream: gunicorn's own parse errors for a broken
#: chunked encoding (``InvalidChunkSize``, ``ChunkMissingTerminator``, ``InvalidChunkExtension``; not ``OSError``
#: subclasses), and ``OSError`` (gunicorn's ``NoMoreData``, a connection reset).
BODY_READ_ERRORS: tuple[type[BaseException], ...] = (ParseException, OSError)


class InMemoryRequest(Request):
    """Flask request whose multipart file parts stay in memory instead of spooling to a temporary file, and whose
    unreadable body is a 400 (``werkzeug.exceptions.BadRequest``), never a 500."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except BODY_READ_ERRORS as exc:
            logger.info("refused a request whose body could not be read: %r", exc)
            raise BadRequest(
                "the request body cannot be read: its chunked transfer encoding is malformed or the connection"
                " broke; send the form again"
            ) from exc
