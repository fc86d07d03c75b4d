"""A fake adb server on a loopback socket, for the Android target's tests.

It speaks the adb server protocol adbutils speaks (4-hex-digit length-prefixed requests,
OKAY/FAIL replies, `host:devices-l`, `host:tport:serial:S`, `shell:CMD` streamed until the
connection closes, the `sync:` file protocol with STAT/SEND/RECV), so the code under test
runs unchanged through adbutils to the wire.  Each phone has a file system (a dict), system
properties and a program that stands in for `benchmark_model` (given by the test).

Nothing here is LayerScope code; the phone's answers are shaped like a real phone's
(mksh's "not found" / "not executable" messages, adb's "device unauthorized" text).
"""
from __future__ import annotations

import re
import shlex
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

UNAUTHORIZED_TEXT = ("device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\nTry 'adb kill-server' "
                     "if that seems wrong.\nOtherwise check for a confirmation dialog on your device.")
ARM64_MACHINE = 183

# (lines, files written, exit code) from (phone, program arguments)
Program = Callable[["FakePhone", list], tuple]


@dataclass
class FakePhone:
    serial: str
    state: str = "device"                    # device, unauthorized, offline
    properties: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)   # path -> bytes
    modes: dict = field(default_factory=dict)   # path -> mode
    program: Optional[Program] = None          # what ./benchmark_model does
    line_delay: float = 0.0                    # seconds between output lines
    disconnect_when: Optional[Callable[[list], bool]] = None  # on these arguments: drop the cable mid-run
    gone: bool = False
    commands: list = field(default_factory=list)
    killed: threading.Event = field(default_factory=threading.Event)


def phone_properties(model="Pixel 8", soc="Tensor G3", soc_maker="Google", version="14", sdk="34",
                     abilist="arm64-v8a") -> dict:
    return {"ro.product.model": model, "ro.product.manufacturer": "Google", "ro.soc.model": soc,
            "ro.soc.manufacturer": soc_maker, "ro.build.version.release": version, "ro.build.version.sdk": sdk,
            "ro.product.cpu.abi": abilist.split(",")[0], "ro.product.cpu.abilist": abilist,
            "ro.product.name": "shiba"}


def elf_header(machine: int = ARM64_MACHINE) -> bytes:
    """The first bytes of a 64-bit little-endian ELF executable for `machine`, and some body."""
    return (b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + struct.pack("<HH", 3, machine) + b"\x00" * 44
            + b"fake benchmark_model body " * 40)


ANSWER_WAIT_S = 15.0  # at most this long without answering (adbutils waits up to 20 s for a starting server)


class FakeAdbServer:
    def __init__(self, phones=()):
        self.phones: dict[str, FakePhone] = {p.serial: p for p in phones}
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.port = self._socket.getsockname()[1]
        self._stop = threading.Event()
        # Cleared by a test: requests wait (up to ANSWER_WAIT_S) as when adb is still starting its server.
        self.answering = threading.Event()
        self.answering.set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        try:
            self._socket.close()
        except OSError:
            pass

    # -- the wire ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _request(self, conn) -> str:
        size = int(self._read(conn, 4), 16)
        return self._read(conn, size).decode()

    @staticmethod
    def _block(text: str) -> bytes:
        data = text.encode()
        return b"%04x" % len(data) + data

    def _fail(self, conn, text: str) -> None:
        conn.sendall(b"FAIL" + self._block(text))

    def _serve(self, conn) -> None:
        self.answering.wait(ANSWER_WAIT_S)
        try:
            with conn:
                self._dispatch(conn)
        except (EOFError, OSError):
            pass

    def _present(self) -> list:
        return [p for p in self.phones.values() if not p.gone]

    def _dispatch(self, conn) -> None:
        request = self._request(conn)
        if request == "host:version":
            conn.sendall(b"OKAY" + self._block("0029"))
        elif request in ("host:devices", "host:devices-l"):
            lines = []
            for phone in self._present():
                extra = (f" usb:1-1 product:shiba model:{phone.properties.get('ro.product.model', '').replace(' ', '_')}"
                         f" device:shiba transport_id:1") if phone.state == "device" else " usb:1-1 transport_id:2"
                lines.append(f"{phone.serial}\t{phone.state}{extra if request.endswith('-l') else ''}\n")
            conn.sendall(b"OKAY" + self._block("".join(lines)))
        elif request.startswith("host-serial:"):
            _, serial, command = request.split(":", 2)
            phone = self.phones.get(serial)
            if phone is None or phone.gone:
                return self._fail(conn, f"device '{serial}' not found")
            answers = {"get-state": phone.state, "features": "shell_v2,cmd,stat_v2", "get-serialno": serial}
            conn.sendall(b"OKAY" + self._block(answers.get(command, "")))
        elif request.startswith("host:tport:serial:"):
            phone = self.phones.get(request.rsplit(":", 1)[1])
            if phone is None or phone.gone:
                return self._fail(conn, f"device '{request.rsplit(':', 1)[1]}' not found")
            if phone.state == "unauthorized":
                return self._fail(conn, UNAUTHORIZED_TEXT)
            if phone.state != "device":
                return self._fail(conn, f"device offline")
            conn.sendall(b"OKAY" + struct.pack("<Q", 1))
            service = self._request(conn)
            if service.startswith("shell:"):
                conn.sendall(b"OKAY")
                self._shell(conn, phone, service[len("shell:"):])
            elif service == "sync:":
                conn.sendall(b"OKAY")
                self._sync(conn, phone)
            else:
                self._fail(conn, f"unknown service {service}")
        else:
            self._fail(conn, f"unknown host service {request}")

    # -- the phone's shell ------------------------------------------------------------------

    def _shell(self, conn, phone: FakePhone, command: str) -> None:
        phone.commands.append(command)
        if command == "getprop":
            conn.sendall("".join(f"[{k}]: [{v}]\n" for k, v in phone.properties.items()).encode())
            return
        match = re.fullmatch(r"cd (\S+) && \./(\S+) (.*) 2>&1; echo LAYERSCOPE_EXIT:\$\?", command)
        if match:
            return self._benchmark(conn, phone, match.group(1), match.group(2), shlex.split(match.group(3)))
        words = shlex.split(command.split("||")[0])
        if words[:2] == ["mkdir", "-p"]:
            return
        if words[:2] == ["rm", "-f"]:
            phone.files.pop(words[2], None)
            return
        if words[:1] == ["chmod"]:
            if words[2] not in phone.files:
                conn.sendall(f"chmod: {words[2]}: No such file or directory\n".encode())
            return
        if words[:1] == ["pkill"]:
            phone.killed.set()
            return
        conn.sendall(f"/system/bin/sh: {words[0]}: inaccessible or not found\n".encode())

    def _benchmark(self, conn, phone: FakePhone, folder: str, name: str, arguments: list) -> None:
        path = f"{folder}/{name}"
        written, drop = {}, False
        if path not in phone.files:  # mksh's words for a missing program and a foreign one
            lines, code = [f"/system/bin/sh: ./{name}: not found"], 127
        elif struct.unpack("<H", phone.files[path][18:20])[0] != ARM64_MACHINE:
            lines, code = [f"/system/bin/sh: ./{name}: not executable: 64-bit ELF file"], 126
        else:
            lines, written, code = phone.program(phone, arguments)
            drop = phone.disconnect_when is not None and phone.disconnect_when(arguments)
        for index, line in enumerate(lines):
            if phone.killed.is_set():  # pkill from another connection
                return
            if drop and index == len(lines) // 2:  # the cable comes out mid-run
                phone.gone = True
                return
            conn.sendall((line + "\n").encode())
            if phone.line_delay:
                time.sleep(phone.line_delay)
        phone.files.update(written)
        conn.sendall(f"LAYERSCOPE_EXIT:{code}\n".encode())

    # -- the sync protocol ------------------------------------------------------------------

    def _sync(self, conn, phone: FakePhone) -> None:
        while True:
            head = self._read(conn, 8)
            command, size = head[:4].decode(), struct.unpack("<I", head[4:])[0]
            argument = self._read(conn, size).decode()
            if command == "STAT":
                data = phone.files.get(argument)
                if data is None:
                    conn.sendall(b"STAT" + struct.pack("<III", 0, 0, 0))
                else:
                    conn.sendall(b"STAT" + struct.pack("<III", 0o100000 | phone.modes.get(argument, 0o644),
                                                       len(data), 1_700_000_000))
            elif command == "SEND":
                remote, _, mode = argument.rpartition(",")
                body = b""
                while True:
                    kind = self._read(conn, 4)
                    length = struct.unpack("<I", self._read(conn, 4))[0]
                    if kind == b"DONE":
                        break
                    body += self._read(conn, length)
                phone.files[remote] = body
                phone.modes[remote] = int(mode) & 0o777
                conn.sendall(b"OKAY" + struct.pack("<I", 0))
            elif command == "RECV":
                data = phone.files.get(argument)
                if data is None:
                    message = b"No such file or directory"
                    conn.sendall(b"FAIL" + struct.pack("<I", len(message)) + message)
                else:
                    for start in range(0, len(data), 65536):
                        chunk = data[start:start + 65536]
                        conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                    conn.sendall(b"DONE" + struct.pack("<I", 0))
            else:  # QUIT
                return
