"""Delimited text (CSV, TSV, any of , ; tab |), plain or gzip, in any encoding, on pyarrow."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import zlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
from charset_normalizer import from_bytes

from ingestion.readers.base import (
    MAX_CELL_BYTES,
    Batch,
    Layer,
    UnreadableFile,
    cap_arrow_cells,
    check_columns,
    first_line,
    without_nul,
)
from ingestion.readers.safety import check_gzip, is_gzip

DELIMITERS = ",;\t|"
SAMPLE_BYTES = 1 << 20
# pyarrow parses blocks of this size; one record (header or row) must fit in a block. 2 MiB
# holds a row with a 1 MB cell (rejected per row, not as a file) and keeps the reader's
# buffers small: 4 MiB blocks put the importer's peak memory 90 MB higher.
BLOCK_BYTES = 2 << 20
_SNIFF_RECORDS = 50


def open_text_head(path: Path, size: int = SAMPLE_BYTES) -> bytes:
    """The first decompressed bytes of a plain or gzip file."""
    if is_gzip(path):
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(size)
        except (OSError, EOFError) as exc:  # a damaged stream fails on its first bytes
            raise UnreadableFile(f"the gzip data is damaged: {exc}") from None
    with open(path, "rb") as fh:
        return fh.read(size)


def detect_encoding(sample: bytes, *, cut: bool = False) -> str:
    """UTF-8 when the bytes decode as UTF-8, else charset-normalizer's best guess.

    ``cut`` says the sample stops inside the file, so a character may be cut at its end.
    """
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if cut and exc.start >= len(sample) - 3:
            return "utf-8"
    best = from_bytes(sample[:SAMPLE_BYTES]).best()
    if best is None:
        raise UnreadableFile("cannot tell the text encoding of the file")
    return best.encoding


def detect_delimiter(lines: list[str]) -> str:
    """The delimiter that splits the header into most-consistent records.

    Linear in the sample, unlike ``csv.Sniffer``, whose quote guessing takes seconds to
    minutes on crafted input of a few kilobytes.
    """
    best, best_score = ",", (-1.0, 0)
    text = "\n".join(lines)
    for order, delimiter in enumerate(DELIMITERS):
        try:
            records = list(
                itertools.islice(csv.reader(io.StringIO(text), delimiter=delimiter), _SNIFF_RECORDS)
            )
        except csv.Error:
            continue
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        rows = [r for r in records[1:] if r]
        consistent = sum(len(r) == width for r in rows) / len(rows) if rows else 1.0
        score = (consistent, -order)
        if score > best_score:
            best, best_score = delimiter, score
    return best


class _Utf8Stream(io.RawIOBase):
    """The file's bytes (gunzipped) as UTF-8; undecodable bytes and NUL become U+FFFD.

    pyarrow would refuse the whole file for one stray byte past the sample the encoding was
    detected on, and cannot report a malformed row whose bytes are not UTF-8. Decoding here
    keeps every row, with the odd character replaced, in C codecs at well over 100 MB/s.
    """

    def __init__(self, path: Path, encoding: str) -> None:
        self._raw = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # noqa: SIM115
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._done:
            chunk = self._raw.read(BLOCK_BYTES)
            self._done = not chunk
            text = without_nul(self._decoder.decode(chunk, final=self._done))
            self._pending = memoryview(text.encode("utf-8", "replace"))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


# The text kept of a record that could not be split (the report shows no more).
INVALID_ROW_TEXT = 10_000


def _starts_record(line: str, record: str) -> bool:
    """Whether a file line is the first line of a record's (possibly cut) text."""
    first = record.split("\n", 1)[0].rstrip("\r")
    if len(record) >= INVALID_ROW_TEXT and "\n" not in record:
        return line.startswith(first)  # the text was cut within its first line
    return line == first


class CsvReader:
    """Delimited text, all values as text.

    Rows with the wrong number of fields are skipped and kept in ``invalid_rows`` (their
    text and, where known, line number) for the rejection report.
    """

    format = "csv"
    has_geometry = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.invalid_rows: list[tuple[int | None, str]] = []
        self.gzip = is_gzip(path)
        if self.gzip:
            check_gzip(path)
        sample = open_text_head(path)
        self.encoding = detect_encoding(sample, cut=len(sample) == SAMPLE_BYTES)
        text = sample.decode(self.encoding, errors="replace").lstrip("\ufeff")
        lines = text.splitlines()
        if len(sample) == SAMPLE_BYTES and len(lines) < 2:
            raise UnreadableFile(
                f"the CSV header row is longer than {SAMPLE_BYTES:,} bytes; "
                f"the limit is {SAMPLE_BYTES:,} bytes"
            )
        if len(sample) == SAMPLE_BYTES:
            lines = lines[:-1]  # the last line of a cut sample is incomplete
        elif not any(line.strip() for line in lines[1:]):
            # Refused rather than read as nothing: a snapshot import of it would retire
            # every place of the dataset.
            raise UnreadableFile("the CSV has a header row but no data rows")
        self.delimiter = detect_delimiter(lines[: _SNIFF_RECORDS + 1])
        try:
            header = next(csv.reader(io.StringIO(text), delimiter=self.delimiter), [])
        except csv.Error as exc:
            raise UnreadableFile(f"the CSV header cannot be read: {exc}") from None
        self.header = [h.strip() for h in header]
        if not any(self.header):
            raise UnreadableFile("the CSV has no header row")
        check_columns(self.header, what="CSV")
        if any(len(h.encode("utf-8")) > MAX_CELL_BYTES for h in self.header):
            raise UnreadableFile(f"a CSV column name is longer than {MAX_CELL_BYTES:,} bytes")

    def layers(self) -> list[Layer]:
        return [Layer(name="", geometry_type=None, features=None, columns=self.header)]

    def batches(self, layer: str = "") -> Generator[Batch, None, None]:
        self.invalid_rows = []

        def invalid(row: pacsv.InvalidRow) -> str:
            self.invalid_rows.append((row.number, row.text[:INVALID_ROW_TEXT]))
            return "skip"

        stream = io.BufferedReader(_Utf8Stream(self.path, self.encoding), BLOCK_BYTES)
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(
                    encoding="utf8",
                    column_names=self.header,
                    skip_rows=1,
                    block_size=BLOCK_BYTES,
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter,
                    newlines_in_values=True,
                    invalid_row_handler=invalid,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in self.header},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            for record_batch in reader:
                rejects: dict[int, tuple[str, str]] = {}
                columns = cap_arrow_cells(record_batch, self.header, rejects)
                yield Batch.of(
                    columns={n: columns[n] for n in self.header},
                    wkb=None,
                    num_rows=record_batch.num_rows,
                    rejects=rejects,
                )
            if any(line is None for line, _ in self.invalid_rows):
                self.invalid_rows = self._numbered(self.invalid_rows)
        except pa.ArrowInvalid as exc:
            if "straddl" in str(exc):
                raise UnreadableFile(
                    f"a CSV record is too long to read: records may not reach far past "
                    f"{BLOCK_BYTES:,} bytes (and values over {MAX_CELL_BYTES:,} bytes are "
                    "rejected anyway)"
                ) from None
            raise UnreadableFile(f"the CSV is malformed: {first_line(exc)}") from None
        except (pa.ArrowException, OSError, EOFError, UnicodeError, zlib.error) as exc:
            raise UnreadableFile(f"the CSV cannot be read: {first_line(exc)}") from None
        finally:
            stream.close()

    def _numbered(self, rows: list[tuple[int | None, str]]) -> list[tuple[int | None, str]]:
        """The rows with the file line each starts on (the header is line 1).

        pyarrow cannot count lines when values may hold newlines, so records it could not
        split come without one. They are rare: one more pass over the (decoded) file finds
        them in order, each at the first line after the previous one that matches its own
        first line.
        """
        numbered: list[tuple[int | None, str]] = []
        pending = iter(rows)
        current = next(pending, None)
        with io.TextIOWrapper(
            io.BufferedReader(_Utf8Stream(self.path, self.encoding), BLOCK_BYTES),
            encoding="utf-8",
            newline="",
        ) as text:
            for number, line in enumerate(text, start=1):
                if current is None:
                    break
                if number > 1 and _starts_record(line.rstrip("\r\n"), current[1]):
                    numbered.append((number, current[1]))
                    current = next(pending, None)
        while current is not None:  # not found (cut text): reported without a line
            numbered.append(current)
            current = next(pending, None)
        return numbered
