"""multipart/form-data bodies, as OpenAI's upload endpoints take them (image edits, audio
transcriptions, file uploads).

A form is read into a dict like a JSON body's: each text field under its name, each
file as an `UploadedFile` (a repeated name, such as `image[]`, as a list), so that
LiteLLM's fields are consumed and the surface validates what it reads the same way
as for JSON. werkzeug's sans-I/O decoder (Quart's own) does the parsing: it is fed as
bytes arrive, so a body can also be read part by part (`trigate.api.uploads`).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import Headers
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Event,
    Field,
    File,
    MultipartDecoder,
    MultipartEncoder,
    NeedData,
    Preamble,
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


# How much of an uploaded file's start is kept, to read its duration from its header.
HEAD_KEPT = 4096


class StreamedForm:
    """A form read as its client sends it (`read` gives the next part of the body, b"" at
    its end): its text fields up to its first file part (`fields`), then that file's
    bytes as they arrive (`StreamedFile`), then whatever text fields follow it. Nothing is
    held but the decoder's buffer, so an upload of any size costs the same memory."""

    def __init__(self, read: Callable[[], Awaitable[bytes]], boundary: bytes) -> None:
        self._read = read
        self._decoder = decoder(boundary)
        self._ended = False

    async def fields(self) -> dict[str, Any]:
        """The text fields before the first file, and that file (a `StreamedFile`) under its
        name; a form with no file is read whole."""
        form: dict[str, Any] = {}
        while True:
            event = await self._next()
            if isinstance(event, Epilogue):
                return form
            if isinstance(event, File):
                content_type = event.headers.get("content-type", "application/octet-stream")
                _add(form, event.name, StreamedFile(self, event.filename or "upload", content_type))
                return form
            if isinstance(event, Field):
                _add(form, event.name, await self._text())

    async def file_data(self) -> AsyncIterator[bytes]:
        """The current file part's bytes, as they arrive."""
        while True:
            event = await self._next()
            if not isinstance(event, Data):
                raise InvalidRequest("The multipart/form-data body is malformed.")
            if event.data:
                yield event.data
            if not event.more_data:
                return

    async def trailing(self) -> AsyncIterator[tuple[str, str]]:
        """The text fields after the file, as they come; a second file is refused."""
        while not isinstance(event := await self._next(), Epilogue):
            if isinstance(event, File):
                raise InvalidRequest("This endpoint takes one file.", param=event.name)
            if isinstance(event, Field):
                yield event.name, await self._text()

    async def _text(self) -> str:
        pieces = []
        while True:
            event = await self._next()
            if not isinstance(event, Data):
                raise InvalidRequest("The multipart/form-data body is malformed.")
            pieces.append(event.data)
            if sum(map(len, pieces)) > TEXT_FIELD_LIMIT:
                raise InvalidRequest("A text field of the form is too long.")
            if not event.more_data:
                return b"".join(pieces).decode("utf-8", "replace")

    async def _next(self) -> Event:
        while True:
            try:
                event = self._decoder.next_event()
            except ValueError as error:
                raise InvalidRequest(
                    f"The multipart/form-data body is malformed: {error}."
                ) from None
            if isinstance(event, Preamble):
                continue
            if not isinstance(event, NeedData):
                return event
            if self._ended:
                raise InvalidRequest("The multipart/form-data body ends before its last part.")
            part = await self._read()
            if part:
                self._decoder.receive_data(part)
            else:
                self._ended = True
                self._decoder.receive_data(None)


# A text field is a model name, a prompt or a format: a megabyte is more than any needs.
TEXT_FIELD_LIMIT = 1024 * 1024


class StreamedFile:
    """An upload's file part, read once as it arrives, and sent on as it is read. What it
    has seen of itself (`size`, its first `HEAD_KEPT` bytes) says how long its audio is
    when the upstream does not."""

    def __init__(self, form: StreamedForm, filename: str, content_type: str) -> None:
        self._form = form
        self.filename = filename
        self.content_type = content_type
        self.size = 0
        self.head = b""
        self.taken = False

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.taken:
            # An upload is sent once: a retry or fallback after it started cannot resend it.
            raise UploadSpent()
        self.taken = True
        async for data in self._form.file_data():
            self.size += len(data)
            if len(self.head) < HEAD_KEPT:
                self.head += data[: HEAD_KEPT - len(self.head)]
            yield data

    def trailing(self) -> AsyncIterator[tuple[str, str]]:
        return self._form.trailing()


class UploadSpent(InvalidRequest):
    def __init__(self) -> None:
        super().__init__(
            "The upload was already sent to an upstream that failed; an upload is streamed "
            "through once and cannot be resent to another.",
            code="upload_not_replayable",
        )


def form_boundary() -> bytes:
    return b"trigate-" + secrets.token_hex(16).encode()


async def streamed_form(
    fields: Mapping[str, Any], file_field: str, upload: StreamedFile, boundary: bytes
) -> AsyncIterator[bytes]:
    """A multipart/form-data body made as it is sent: `fields` (text), the upload's bytes
    as they arrive from its client, then the text fields that followed it there."""
    encoder = MultipartEncoder(boundary)
    for name, value in fields.items():
        for item in value if isinstance(value, list) else (value,):
            yield encoder.send_event(Field(name, Headers()))
            yield encoder.send_event(Data(str(item).encode(), more_data=False))
    disposition = Headers({"content-type": upload.content_type})
    yield encoder.send_event(File(file_field, upload.filename, disposition))
    async for data in upload.chunks():
        yield encoder.send_event(Data(data, more_data=True))
    yield encoder.send_event(Data(b"", more_data=False))
    async for name, text in upload.trailing():
        yield encoder.send_event(Field(name, Headers()))
        yield encoder.send_event(Data(text.encode(), more_data=False))
    yield encoder.send_event(Epilogue(b""))
