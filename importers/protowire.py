"""Minimal protobuf wire-format walker.

Used for three things a full parse cannot do cheaply: sniffing what kind of
message a file holds without parsing it, opening a model whose weights are
hundreds of megabytes without copying them (we walk an mmap, skip the big
`bytes` fields and remember their offsets), and parsing a big message a
piece at a time so that no single C call holds the GIL long (parse_in_pieces).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated or not protobuf at all)."""


class TruncatedError(WireError):
    """The data ends inside a field: well formed up to there, cut short (or not protobuf at all)."""


@dataclass(frozen=True, slots=True)
class Field:
    number: int
    wire_type: int
    tag_start: int  # offset of the tag: raw bytes of the field are buf[tag_start:end]
    start: int  # offset of the payload (after tag and, for bytes, the length)
    end: int  # offset just past the payload
    value: int  # the integer for varint / fixed fields, the payload length otherwise


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise TruncatedError(f"varint runs past the end of the data at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def iter_fields(buf, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Yield the top-level fields of the message in buf[start:end]; raise WireError if malformed."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = read_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {tag_start}")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield Field(number, wire_type, tag_start, pos, pos, value)
        elif wire_type == LENGTH_DELIMITED:
            length, payload = read_varint(buf, pos, end)
            pos = payload + length
            if pos > end:
                raise TruncatedError(
                    f"field {number} at byte {tag_start} claims {length} bytes but only {end - payload} remain")
            yield Field(number, wire_type, tag_start, payload, pos, length)
        elif wire_type == FIXED64:
            pos += 8
            if pos > end:
                raise TruncatedError(f"fixed64 field {number} at byte {tag_start} runs past the end")
            yield Field(number, wire_type, tag_start, pos - 8, pos, int.from_bytes(buf[pos - 8:pos], "little"))
        elif wire_type == FIXED32:
            pos += 4
            if pos > end:
                raise TruncatedError(f"fixed32 field {number} at byte {tag_start} runs past the end")
            yield Field(number, wire_type, tag_start, pos - 4, pos, int.from_bytes(buf[pos - 4:pos], "little"))
        else:
            # Groups are deprecated and used by neither ONNX nor Core ML.
            raise WireError(f"unexpected wire type {wire_type} at byte {tag_start}")


def top_level_field_numbers(buf, limit: int = 64) -> list[int]:
    """Field numbers of the first `limit` top-level fields; raises WireError if malformed."""
    numbers = []
    for field in iter_fields(buf):
        numbers.append(field.number)
        if len(numbers) >= limit:
            break
    return numbers


def length_delimited(number: int, payload: bytes) -> bytes:
    return encode_varint((number << 3) | LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def find_fields(buf, number: int, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
    """(tag_start, payload_start, end) of every length-delimited field `number` of the message in
    buf[start:end]; the other fields are only stepped over.  Raises WireError like iter_fields.

    `iter_fields` makes a Field per field; a 100,000-node ONNX graph has 200,000 fields (nodes,
    value_info) of which only the few thousand initializers matter to the importer, so this
    loop reads the one-byte tags and lengths inline and builds nothing for the others (5x faster).
    """
    end = len(buf) if end is None else end
    found = []
    pos = start
    while pos < end:
        tag_start = pos
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end)
        wire_type = tag & 7
        if tag >> 3 == 0:
            raise WireError(f"field number 0 at byte {tag_start}")
        if wire_type == LENGTH_DELIMITED:
            if pos >= end:
                raise TruncatedError(f"varint runs past the end of the data at byte {pos}")
            length = buf[pos]
            if length < 0x80:
                payload = pos + 1
            elif pos + 1 < end and buf[pos + 1] < 0x80:  # 128 to 16,383 bytes: most nodes
                length, payload = (length & 0x7F) | (buf[pos + 1] << 7), pos + 2
            else:
                length, payload = read_varint(buf, pos, end)
            pos = payload + length
            if pos > end:
                raise TruncatedError(
                    f"field {tag >> 3} at byte {tag_start} claims {length} bytes but only {end - payload} remain")
            if tag >> 3 == number:
                found.append((tag_start, payload, pos))
        elif wire_type == VARINT:
            _, pos = read_varint(buf, pos, end)
        elif wire_type == FIXED64 or wire_type == FIXED32:
            pos += 8 if wire_type == FIXED64 else 4
            if pos > end:
                raise TruncatedError(f"fixed{64 if wire_type == FIXED64 else 32} field {tag >> 3} at byte {tag_start} "
                                "runs past the end")
        else:
            raise WireError(f"unexpected wire type {wire_type} at byte {tag_start}")
    return found


# Bytes of wire data per piece parse_in_pieces hands to the parser: a few ms of one C call (1-3 ms at
# upb's 0.4-2 GB/s; up to 5-7.5 ms of CPU measured in tests/importers/test_onnx_parse_pieces.py, where
# the pages it writes are new).
PIECE_BYTES = 1 << 20
# Data up to this many pieces is parsed in one call.  Pieces cost CPU (the walk, ~0.25 us a field, and
# more for the merges: 25-30 ms instead of 15-20 for a 2.9 MB, 20,000-node model in a fresh process),
# but one call over 4 MB, ~12 ms of CPU on a quiet machine, took 32-37 ms of wall time (38-61 ms on a
# busy machine) in an app's first second (the helper process starting on the other core), all of it with the window unable to
# paint: a 3.8 MB model's first open stalled the window over 100 ms in 14 of 30 runs with 4 here,
# 5 of 30 with 1 (alternated, machine loaded).  So only a file of one piece is parsed in one call.
ONE_CALL_PIECES = 1


def parse_in_pieces(message_class, data: bytes, split_field: int):
    """`message_class.FromString(data)`, the same message, parsed a piece at a time.

    Why: one parse of a 22 MB ONNX model is one C call holding the GIL 40-60 ms in a fresh process
    (page faults of the memory it fills), and the app's window, whose timers and paints need the GIL,
    froze for that long while its worker opened the model.  Protobuf merges repeated occurrences of
    a message field (repeated fields append, singular ones: the last wins, as within one message),
    and parsing a+b is merging b's parse into a's.  So the top-level field `split_field` (ONNX: the
    graph) is cut between two of its own top-level fields, and each part is fed as that field to
    one `MergeFromString` call; between calls other threads get the GIL.

    Every cut is at a field boundary found by walking the fields' tags and lengths (a Python loop,
    ~0.25 us a field, that hands the GIL over by itself).  Anything the walk finds wrong, and any
    piece that does not parse, makes this parse the whole data in one call: a malformed file raises
    exactly what `FromString` raises.
    """
    if len(data) <= ONE_CALL_PIECES * PIECE_BYTES:
        return message_class.FromString(data)
    message = message_class()
    try:
        for piece in _pieces(data, split_field):
            # No gil_slices.hand_over() here: the interpreter lets a waiting thread in between the calls
            # of this loop by itself (within its switch interval, 1 ms in the app, plus one piece; measured), and a
            # forced switch after every piece would hand a busy third thread (a background import) a switch
            # interval each time.
            message.MergeFromString(piece)
    except Exception:  # WireError from the walk, DecodeError from a piece: the whole parse says what
        return message_class.FromString(data)
    return message


def _pieces(data: bytes, split_field: int) -> Iterator[bytes | memoryview]:
    """Consecutive pieces of `data` whose parses merged in order are the parse of `data`: runs of
    its top-level fields, and each large `split_field` cut into parts of about PIECE_BYTES.

    A part is copied, after its field's tag and length, into one buffer used for every part (a
    piece is valid until the next one is asked for; the parser copies what it keeps): a new
    megabyte for each part cost ~15 ms more over 22 MB, the page faults of fresh memory.
    """
    view = memoryview(data)
    buffer = bytearray(2 * PIECE_BYTES)
    run_start = 0  # start of the run of top-level fields not yet yielded
    for field in iter_fields(data):
        if field.number != split_field or field.wire_type != LENGTH_DELIMITED or field.value <= PIECE_BYTES:
            continue
        if run_start < field.tag_start:
            yield data[run_start:field.tag_start]
        tag = encode_varint((split_field << 3) | LENGTH_DELIMITED)
        part_start = field.start
        while part_start < field.end:
            part_end = _field_start_after(data, part_start, part_start + PIECE_BYTES, field.end)
            header = tag + encode_varint(part_end - part_start)
            size = len(header) + part_end - part_start
            if size > len(buffer):
                buffer = bytearray(size)
            buffer[:len(header)] = header
            buffer[len(header):size] = view[part_start:part_end]
            yield memoryview(buffer)[:size]
            part_start = part_end
        run_start = field.end
    if run_start < len(data):
        yield data[run_start:]


def _field_start_after(buf, pos: int, target: int, end: int) -> int:
    """Where the first top-level field at or after `target` starts (`end` if none), walking from
    `pos`, a field start of the message in buf[:end].  Raises WireError if the fields are malformed.

    Inlined for the common field (one-byte tag, length-delimited, length under 16,384: ONNX nodes),
    as in find_fields: 100,000 nodes take ~25 ms.
    """
    target = min(target, end)
    while pos < target:
        tag = buf[pos]
        if tag & 0x87 == LENGTH_DELIMITED and pos + 2 < end:  # a one-byte tag
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2 + length
                continue
            high = buf[pos + 2]
            if high < 0x80:
                pos += 3 + ((length & 0x7F) | (high << 7))
                continue
        tag, pos = read_varint(buf, pos, end)
        wire_type = tag & 7
        if tag >> 3 == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos, end)
            pos += length
        elif wire_type == VARINT:
            _, pos = read_varint(buf, pos, end)
        elif wire_type == FIXED64 or wire_type == FIXED32:
            pos += 8 if wire_type == FIXED64 else 4
        else:
            raise WireError(f"unexpected wire type {wire_type} at byte {pos}")
    if pos > end:
        raise TruncatedError(f"a field runs past the end of the data (byte {end})")
    return pos
