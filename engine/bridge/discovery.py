"""Finding agents: typed addresses, mDNS on the local network, iPhones connected by USB, Android phones over adb.

`discover()` returns entries (one per agent or device) and notes (one line per
source that could not be searched, saying why and what to do).  It never
returns a silently empty list: no usbmuxd, or no `devices` extra installed,
is a note.

- Typed address: connect, hello, describe (`probe_agent`).
- mDNS: agents started with `layerscope agent --advertise` register
  ``_layerscope._tcp.local.`` (zeroconf) with TXT keys ``protocol``, ``token``
  ("required"/"none") and ``device``.
- USB: pymobiledevice3 asks usbmuxd for connected devices and lockdownd for
  their name, model and iOS version; the agent port (7878) is probed through
  usbmux.  `UsbForwarder` forwards a local loopback port to it, which is how a
  BridgeTarget reaches ``usb://UDID``.

zeroconf and pymobiledevice3 are the optional ``devices`` extra; importing
this module never needs them.  The USB code path cannot be exercised here
without an iPhone: see docs/bridge-protocol.md ("Tested where").
"""
from __future__ import annotations

import asyncio
import inspect
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from engine.bridge import protocol as P

__all__ = ["discover", "probe_agent", "browse_mdns", "advertise", "list_usb_devices", "UsbForwarder",
           "DeviceList", "format_devices", "EXTRA_HINT"]

EXTRA_HINT = "pip install 'layerscope[devices]'  (zeroconf and pymobiledevice3)"
USBMUXD_MISSING = ("usbmuxd is not running (no /var/run/usbmuxd socket), so iPhones connected by USB cannot be "
                   "listed; on Linux install and start it (e.g. `apt install usbmuxd`), on macOS it is part of "
                   "the system")


@dataclass
class DeviceList:
    entries: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict:
        return {"entries": self.entries, "notes": self.notes}


def _run(coro_or_value, timeout: float):
    """Await a coroutine in a private loop (pymobiledevice3 >= 5 is async; older releases are not)."""
    if not inspect.isawaitable(coro_or_value):
        return coro_or_value

    async def bounded():
        return await asyncio.wait_for(coro_or_value, timeout)

    return asyncio.run(bounded())


# ============================================================================ typed addresses

# An agent that accepted the connection is there: its first description may take seconds (it imports its
# runtimes; on a Mac it lists connected phones through `xcrun devicectl`), so the reply gets longer than the search.
DESCRIBE_TIMEOUT_S = 20.0


def probe_agent(address: str, token: Optional[str] = None, timeout: float = 3.0) -> dict:
    from engine.bridge.client import BridgeClient, normalize_address
    from engine.targets.settings import TargetError
    try:
        normalized = normalize_address(address)
    except TargetError as exc:
        return {"source": "address", "address": address, "status": "error", "detail": str(exc)}
    entry: dict[str, Any] = {"source": "address", "address": normalized}
    client = BridgeClient(normalized, token, connect_timeout=timeout, reply_timeout=max(timeout, DESCRIBE_TIMEOUT_S))
    try:
        welcome = client.connect()
        description = client.describe()
    except TargetError as exc:
        entry.update(status=getattr(exc, "code", "error"), detail=str(exc))
        return entry
    finally:
        client.close()
    device = description["device"]
    entry.update(status="ok", protocol=welcome["protocol"], agent=welcome["agent"], device=device,
                 backends=[{"name": b["name"], "available": b["available"],
                            "compute_units": [u["name"] for u in b.get("compute_units", [])],
                            "devices": list(b.get("devices") or ()),
                            **({"reason": b["reason"]} if not b["available"] and b.get("reason") else {})}
                           for b in description["backends"]],
                 busy=bool(description.get("busy")))
    return entry


# ============================================================================ mDNS

def _zeroconf():
    try:
        import zeroconf
        return zeroconf
    except ImportError:
        return None


def browse_mdns(timeout: float = 1.5) -> tuple[list[dict], list[str]]:
    zeroconf = _zeroconf()
    if zeroconf is None:
        return [], [f"local network (mDNS): not searched, zeroconf is not installed: {EXTRA_HINT}"]
    found: list[str] = []
    lock = threading.Lock()

    def on_change(zeroconf, service_type, name, state_change):  # noqa: ARG001 - zeroconf's signature
        with lock:
            if name not in found:
                found.append(name)

    try:
        zc = zeroconf.Zeroconf()
    except OSError as exc:
        return [], [f"local network (mDNS): not searched, no multicast here ({exc})"]
    entries = []
    try:
        browser = zeroconf.ServiceBrowser(zc, P.MDNS_SERVICE_TYPE, handlers=[on_change])
        time.sleep(timeout)
        browser.cancel()
        for name in list(found):
            info = zc.get_service_info(P.MDNS_SERVICE_TYPE, name, timeout=1000)
            if info is None:
                continue
            properties = {k.decode(): (v.decode() if isinstance(v, bytes) else v)
                          for k, v in (info.properties or {}).items()}
            addresses = info.parsed_addresses()
            host = addresses[0] if addresses else (info.server or "").rstrip(".")
            entries.append({"source": "mdns", "name": name.replace("." + P.MDNS_SERVICE_TYPE, ""),
                            "address": f"ws://{host}:{info.port}", "addresses": addresses,
                            "protocol": properties.get("protocol", ""),
                            "token_required": properties.get("token") == "required",
                            "device": {"name": properties.get("device", "")}})
    finally:
        zc.close()
    return entries, []


class _Advertisement:
    def __init__(self, zc, info):
        self.zc, self.info = zc, info

    def close(self) -> None:
        try:
            self.zc.unregister_service(self.info)
        finally:
            self.zc.close()


def _local_addresses(host: str) -> list[str]:
    if host not in ("0.0.0.0", "::", ""):
        return [host]
    try:
        import ifaddr
        addresses = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
                     if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
        return addresses or ["127.0.0.1"]
    except ImportError:
        return [socket.gethostbyname(socket.gethostname())]


def advertise(port: int, name: str, token_required: bool, host: str = "0.0.0.0"):
    """Register the agent as ``_layerscope._tcp``; returns a handle with close().  Needs zeroconf."""
    zeroconf = _zeroconf()
    if zeroconf is None:
        raise RuntimeError(f"--advertise needs zeroconf: {EXTRA_HINT}")
    safe_name = "".join(c if c.isalnum() or c in "-_ " else "-" for c in name)[:50] or "layerscope-agent"
    info = zeroconf.ServiceInfo(
        P.MDNS_SERVICE_TYPE, f"{safe_name}.{P.MDNS_SERVICE_TYPE}", port=port,
        parsed_addresses=_local_addresses(host),
        properties={"protocol": P.PROTOCOL, "token": "required" if token_required else "none", "device": name},
        server=f"{socket.gethostname().split('.')[0]}.local.")
    zc = zeroconf.Zeroconf()
    zc.register_service(info, allow_name_change=True)
    return _Advertisement(zc, info)


# ============================================================================ USB (usbmux)

def _usbmux():
    try:
        from pymobiledevice3 import usbmux
        return usbmux
    except ImportError:
        return None


def list_usb_devices(agent_port: int = P.DEFAULT_PORT, timeout: float = 3.0) -> tuple[list[dict], list[str]]:
    usbmux = _usbmux()
    if usbmux is None:
        return [], [f"USB: iPhones connected by USB are listed with the devices extra: {EXTRA_HINT}"]
    try:
        devices = _run(usbmux.list_devices(), timeout)
    except Exception as exc:  # ConnectionFailedToUsbmuxdError and friends, by name: the class moved across releases
        if "usbmux" in type(exc).__name__.lower() or isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            return [], [f"USB: {USBMUXD_MISSING}"]
        return [], [f"USB: usbmuxd could not be asked for devices ({type(exc).__name__}: {exc})"]
    entries = []
    for device in devices:
        if getattr(device, "connection_type", "USB") != "USB":
            continue
        entries.append(_usb_entry(device, agent_port, timeout))
    notes = [] if entries else ["USB: no iPhone connected (usbmuxd is running and lists none); connect one "
                                "with a cable, unlock it and trust this computer"]
    return entries, notes


def _usb_entry(device, agent_port: int, timeout: float) -> dict:
    entry: dict[str, Any] = {"source": "usb", "udid": device.serial, "address": f"usb://{device.serial}:{agent_port}"}
    try:
        from pymobiledevice3.lockdown import create_using_usbmux
        lockdown = _run(create_using_usbmux(serial=device.serial, autopair=False), timeout)
        values = lockdown.all_values
        entry["device"] = {"name": values.get("DeviceName", ""), "hardware_model": values.get("ProductType", ""),
                           "model_name": getattr(lockdown, "display_name", None) or "",
                           "os": "iOS", "os_version": values.get("ProductVersion", "")}
        close = getattr(lockdown, "close", None)
        if close is not None:
            _run(close(), timeout)
    except Exception as exc:
        entry["device"] = {}
        entry["detail"] = (f"could not read the device's name and version ({type(exc).__name__}): unlock it and "
                           "tap Trust on this computer")
    try:
        sock = _run(device.connect(agent_port), timeout)
        sock.close()
        entry["status"] = "ok"
        entry["agent"] = f"a program answers on device port {agent_port} (forwarded over USB)"
    except Exception:
        entry["status"] = "no_agent"
        entry["agent"] = phone_route_hint(device.serial)
    return entry


def phone_route_hint(udid: str) -> str:
    """One line: how this iPhone is profiled from here (there is no LayerScope app for iOS)."""
    if sys.platform == "darwin":
        return (f"profile it on this Mac with `layerscope profile MODEL --target iphone:{udid}` "
                "(Xcode and a signing team needed once: docs/iphone.md)")
    return (f"to profile it, connect it to a Mac with Xcode, run `layerscope agent --listen 0.0.0.0:7878 "
            f"--generate-token` there and use --target 'ws://MAC:7878?device={udid}&token=TOKEN' here "
            "(docs/iphone.md)")


class UsbForwarder:
    """Forward 127.0.0.1:<ephemeral> to port `device_port` of the iPhone `udid` through usbmux.

    Runs its own event loop in a daemon thread; `start()` returns the local port.
    """

    def __init__(self, udid: str, device_port: int = P.DEFAULT_PORT):
        self.udid = udid
        self.device_port = device_port
        self.port: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        # Why the last forwarded connection could not reach the device port (None: it could).
        self.last_error: Optional[str] = None

    def start(self, timeout: float = 5.0) -> int:
        from engine.targets.settings import TargetError
        usbmux = _usbmux()
        if usbmux is None:
            raise TargetError(f"usb:// addresses need the devices extra: {EXTRA_HINT}")
        self._thread = threading.Thread(target=self._serve, args=(usbmux,), name="usb-forward", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None or self.port is None:
            raise TargetError(f"could not forward the agent port of {self.udid} over USB: {self._error}")
        return self.port

    def _serve(self, usbmux) -> None:
        async def pipe(reader, writer):
            try:
                while True:
                    data = await reader.read(1 << 16)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except Exception:
                pass
            finally:
                try:
                    writer.close()
                except Exception:
                    pass

        async def handle(local_reader, local_writer):
            try:
                device = await _maybe_await(usbmux.select_device(self.udid))
                if device is None:
                    raise ConnectionError(f"iPhone {self.udid} is not connected (usbmuxd does not list it)")
                sock = await _maybe_await(device.connect(self.device_port))
                sock.setblocking(False)
                remote_reader, remote_writer = await asyncio.open_connection(sock=sock)
            except Exception as exc:
                # Kept for the client: the WebSocket side only sees a connection closed at once.
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                local_writer.close()
                return
            self.last_error = None
            await asyncio.gather(pipe(local_reader, remote_writer), pipe(remote_reader, local_writer))

        async def main():
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await server.serve_forever()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # stop() cancels serve_forever
            self._error = exc
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None:
            for task in asyncio.all_tasks(self._loop):
                self._loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout=2)


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


# ============================================================================ all sources

def discover(addresses: Sequence[str] = (), token: Optional[str] = None, mdns: bool = True, usb: bool = True,
             timeout: float = 1.5, agent_port: int = P.DEFAULT_PORT, android: bool = True) -> DeviceList:
    result = DeviceList()
    if android:  # phones over adb (engine.bridge.android): targets of this computer, android:SERIAL
        from engine.bridge.android import list_android_phones
        phones, notes = list_android_phones()
        result.entries += [{"source": "android", "address": f"android:{phone['serial']}", "device": phone,
                            "status": "ok" if phone["ready"] else phone["state"],
                            **({"detail": phone["detail"]} if phone.get("detail") else {})} for phone in phones]
        result.notes += notes
    for address in addresses:
        result.entries.append(probe_agent(address, token, timeout=max(timeout, 2.0)))
    if mdns:
        entries, notes = browse_mdns(timeout)
        result.entries += entries
        result.notes += notes
        if not entries and not notes:
            result.notes.append("local network (mDNS): no agent advertised (start one with "
                                "`layerscope agent --listen 0.0.0.0:7878 --token T --advertise`)")
    if usb:
        entries, notes = list_usb_devices(agent_port, timeout=max(timeout, 3.0))
        if sys.platform == "darwin":
            # On a Mac, Xcode's devicectl knows the phones and they are targets here (iphone:UDID);
            # their usbmux entries would list the same phones again.
            from engine.bridge.iphone import list_phones
            phones, phone_notes = list_phones()
            listed = {phone["udid"] for phone in phones}
            entries = [e for e in entries if e.get("udid") not in listed]
            result.entries += [{"source": "iphone", "address": f"iphone:{phone['udid']}", "device": phone,
                                "status": "ok" if phone["ready"] else "not_ready",
                                **({"detail": phone["detail"]} if phone.get("detail") else {})} for phone in phones]
            result.notes += phone_notes
        result.entries += entries
        result.notes += notes
    return result


def format_devices(result: DeviceList) -> str:
    lines = []
    for entry in result.entries:
        device = entry.get("device") or {}
        name = device.get("name") or entry.get("name") or "?"
        if entry["source"] == "android":
            version = f"Android {device['android_version']}" if device.get("android_version") else ""
            facts = ", ".join(f for f in (device.get("soc"), version, device.get("abi")) if f)
            lines.append(f"android  {device.get('model') or entry['address']}  ({facts or device.get('state', '?')})  "
                         f"{entry['address']}")
            lines.append("         LiteRT benchmark_model: " + (entry.get("detail") or
                                                                 "ready; --android-delegates cpu,xnnpack,gpu"))
        elif entry["source"] == "iphone":
            version = f"{device.get('os', 'iOS')} {device.get('os_version', '')}".strip()
            lines.append(f"iphone   {name}  ({device.get('model') or device.get('hardware_model') or 'iPhone'}, "
                         f"{version})  {entry['address']}")
            lines.append(f"         Core ML through ModelRunner: "
                         f"{entry.get('detail') or 'ready; --compute-units ' + ' '.join(device.get('compute_units', []))}")
        elif entry["source"] == "usb":
            model = device.get("model_name") or device.get("hardware_model") or "iPhone"
            version = f"iOS {device['os_version']}" if device.get("os_version") else ""
            lines.append(f"usb      {name}  ({model}{', ' + version if version else ''})  {entry['address']}")
            lines.append(f"         {entry.get('agent', '')}{'; ' + entry['detail'] if entry.get('detail') else ''}")
        elif entry["source"] == "mdns":
            token = "token required" if entry.get("token_required") else "no token"
            lines.append(f"network  {name}  {entry['address']}  ({entry.get('protocol') or '?'}, {token})")
        else:
            if entry.get("status") != "ok":
                lines.append(f"address  {entry['address']}  {entry.get('status')}: {entry.get('detail', '')}")
                continue
            os_text = f"{device.get('os', '')} {device.get('os_version', '')}".strip()
            lines.append(f"address  {name}  {entry['address']}  ({device.get('hardware_model', '')}; {os_text}; "
                         f"{device.get('chip', '')}){'  BUSY' if entry.get('busy') else ''}")
            for backend in entry.get("backends", []):
                if backend["available"]:
                    lines.append(f"         {backend['name']}: {', '.join(backend['compute_units'])}")
                else:
                    lines.append(f"         {backend['name']}: unavailable ({backend.get('reason', '')})")
                for phone in backend.get("devices", ()):
                    lines.append(f"         {backend['name']} device: {phone.get('name')} ({phone.get('model') or 'iPhone'}, "
                                 f"{phone.get('os', 'iOS')} {phone.get('os_version', '')}; {phone.get('udid')})  "
                                 f"{entry['address']}?device={phone.get('udid')}"
                                 + (f"  not ready: {phone['detail']}" if phone.get("detail") else ""))
    if not result.entries:
        lines.append("no agents or devices found")
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def to_json(result: DeviceList) -> str:
    return json.dumps(result.to_json_dict(), indent=1, default=str)
