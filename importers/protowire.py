"""Minimal protobuf wire-format walker.

Used for two things a full parse cannot do cheaply: sniffing what kind of
message a file holds without parsing it, and opening a model whose weights
are hundreds of megabytes without copying them (we walk an mmap, skip the
big `bytes` fields and remember their offsets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated or not protobuf at all)."""


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
            raise WireError(f"varint runs past the end of the data at byte {pos}")
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
                raise WireError(
                    f"field {number} at byte {tag_start} claims {length} bytes but only "
                    f"{end - payload} remain (the data is truncated)")
            yield Field(number, wire_type, tag_start, payload, pos, length)
        elif wire_type == FIXED64:
            pos += 8
            if pos > end:
                raise WireError(f"fixed64 field {number} at byte {tag_start} runs past the end")
            yield Field(number, wire_type, tag_start, pos - 8, pos, int.from_bytes(buf[pos - 8:pos], "little"))
        elif wire_type == FIXED32:
            pos += 4
            if pos > end:
                raise WireError(f"fixed32 field {number} at byte {tag_start} runs past the end")
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
                raise WireError(f"varint runs past the end of the data at byte {pos}")
            length = buf[pos]
            if length < 0x80:
                payload = pos + 1
            elif pos + 1 < end and buf[pos + 1] < 0x80:  # 128 to 16,383 bytes: most nodes
                length, payload = (length & 0x7F) | (buf[pos + 1] << 7), pos + 2
            else:
                length, payload = read_varint(buf, pos, end)
            pos = payload + length
            if pos > end:
                raise WireError(
                    f"field {tag >> 3} at byte {tag_start} claims {length} bytes but only "
                    f"{end - payload} remain (the data is truncated)")
            if tag >> 3 == number:
                found.append((tag_start, payload, pos))
        elif wire_type == VARINT:
            _, pos = read_varint(buf, pos, end)
        elif wire_type == FIXED64 or wire_type == FIXED32:
            pos += 8 if wire_type == FIXED64 else 4
            if pos > end:
                raise WireError(f"fixed{64 if wire_type == FIXED64 else 32} field {tag >> 3} at byte {tag_start} "
                                "runs past the end")
        else:
            raise WireError(f"unexpected wire type {wire_type} at byte {tag_start}")
    return found
