"""multipart/form-data bodies, as OpenAI's upload endpoints take them (image edits, audio
transcriptions, file uploads).

A form is read into a dict like a JSON body's: each text field under its name, each
file as an `UploadedFile` (a repeated name, such as `image[]`, as a list), so that
LiteLLM's fields are consumed and the surface validates what it reads the same way
as for JSON. werkzeug's sans-I/O decoder (Quart's own) does the parsing: it is fed as
bytes arrive, so a body can also be read part by part (`trigate.api.uploads`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
)

from trigate.errors import InvalidRequest

FORM = "multipart/form-data"


@dataclass(slots=True)
class UploadedFile:
    """One file part of a form, held whole (an image to edit is a few megabytes at most,
    and within the request's size limit)."""

    filename: str
    content_type: str
    data: bytes


def boundary_of(headers: Mapping[str, str]) -> bytes:
    """The form's boundary, from its content-type; a 400 for a body that is not a form."""
    media, _, params = headers.get("content-type", "").partition(";")
    if media.strip().lower() != FORM:
        raise InvalidRequest("This endpoint takes a multipart/form-data body.")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    raise InvalidRequest("The multipart/form-data body's content-type names no boundary.")


def decoder(boundary: bytes) -> MultipartDecoder:
    return MultipartDecoder(boundary, max_form_memory_size=None)


def parse_form(raw: bytes | bytearray, headers: Mapping[str, str]) -> dict[str, Any]:
    """A whole form body as a dict: text fields as strings, files as `UploadedFile`s."""
    reader = decoder(boundary_of(headers))
    reader.receive_data(bytes(raw))
    reader.receive_data(None)
    form: dict[str, Any] = {}
    name: str | None = None
    current: UploadedFile | None = None
    pieces: list[bytes] = []
    try:
        while not isinstance(event := reader.next_event(), Epilogue):
            if isinstance(event, NeedData):
                raise InvalidRequest("The multipart/form-data body ends before its last part.")
            if isinstance(event, Field | File):
                name, pieces = event.name, []
                current = _file_of(event) if isinstance(event, File) else None
            elif isinstance(event, Data):
                pieces.append(event.data)
                if not event.more_data and name is not None:
                    data = b"".join(pieces)
                    value: Any = data.decode("utf-8", "replace") if current is None else current
                    if current is not None:
                        current.data = data
                    _add(form, name, value)
    except ValueError as error:
        raise InvalidRequest(f"The multipart/form-data body is malformed: {error}.") from None
    return form


def _file_of(event: File) -> UploadedFile:
    content_type = event.headers.get("content-type", "application/octet-stream")
    return UploadedFile(event.filename or "upload", content_type, b"")


def _add(form: dict[str, Any], name: str, value: Any) -> None:
    """A repeated field (`image[]` of several images) becomes a list, in order."""
    if name not in form:
        form[name] = value
        return
    held = form[name]
    form[name] = [*held, value] if isinstance(held, list) else [held, value]


FormFields = dict[str, str | list[str]]


def form_parts(body: Mapping[str, Any]) -> tuple[FormFields, list[tuple[str, UploadedFile]]]:
    """A form dict split for sending on: its text fields (a repeated one as a list) and its
    files with their field names, as httpx's `data` and `files` take them."""
    fields: FormFields = {}
    files: list[tuple[str, UploadedFile]] = []
    for name, value in body.items():
        texts: list[str] = []
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, UploadedFile):
                files.append((name, item))
            elif isinstance(item, bool):
                texts.append("true" if item else "false")
            elif item is not None:
                texts.append(str(item))
        if texts:
            fields[name] = texts if len(texts) > 1 else texts[0]
    return fields, files
