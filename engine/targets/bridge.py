"""Bridge target: a model profiled by an agent on another device, behind the Target interface.

    target = get_target("ws://127.0.0.1:7878")            # or "ws://HOST:PORT?backend=coreml&unit=CPU_AND_NE"
    target.prepare(model_path, settings)                  # connect, upload (cache hit by sha256), load
    profile = target.profile(settings, progress, cancel)  # streams progress; cancel -> cancel on the agent
    target.describe()                                     # the agent's device, OS, chip, compute units

Addresses: ``ws://HOST:PORT`` (query keys: ``backend``, ``unit``, ``token``,
``granularity``, ``device``), ``HOST:PORT``, or ``usb://UDID[:PORT]`` for a device
whose agent listens on a port reached through usbmux forwarding (engine.bridge.discovery;
no such agent exists for iOS today, docs/bridge-protocol.md).

``device=NAME-or-UDID`` asks a Mac agent for one of its connected iPhones or iPads
(engine.bridge.iphone; the backend is then coreml).  A Core ML run takes an ML Program:
an .onnx model is converted here first (engine.convert, its layer map uploaded with it,
so the results come back keyed by the ONNX nodes).
The token may also come from the environment variable LAYERSCOPE_AGENT_TOKEN.

Lost agent: the agent streams partial profiles; when the connection drops
mid-profile, `profile` returns the completed runs (`complete=False`, `error`
says the agent was lost) as the Target protocol asks of a failed profile, and
raises `BridgeConnectionLost` only when no run had completed.  The next call
reconnects (the model is then a cache hit on the agent) and loads again.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

from engine.bridge import protocol as P
from engine.bridge.client import (BridgeClient, BridgeConnectionLost, BridgeError, arrays_from_npz_b64,
                                  normalize_address, npz_b64)
from engine.bridge.results import profile_from_document
from engine.profile import Profile, ProfileFormatError
from engine.targets.settings import ProfileSettings, ProgressCallback, TargetError

__all__ = ["BridgeTarget", "is_bridge_address"]

ADDRESS_SCHEMES = ("ws://", "wss://", "usb://")


def is_bridge_address(name: str) -> bool:
    return name.startswith(ADDRESS_SCHEMES)


class BridgeTarget:
    """A remote agent as a Target.  Not thread-safe: one profile at a time per instance."""

    name = "bridge"

    def __init__(self, address: str, token: Optional[str] = None, backend: Optional[str] = None,
                 compute_unit: Optional[str] = None, granularity: Optional[str] = None, device: Optional[str] = None,
                 partial_every: Optional[int] = None, connect_timeout: float = P.CONNECT_TIMEOUT_S,
                 reply_timeout: float = P.REPLY_TIMEOUT_S, stall_timeout: float = P.STALL_TIMEOUT_S):
        self.requested_address = address
        query: dict[str, list[str]] = {}
        self._forwarder = None
        if address.startswith("usb://"):
            from engine.bridge.discovery import UsbForwarder
            udid, _, port = address[len("usb://"):].partition(":")
            self._forwarder = UsbForwarder(udid.split("?")[0], int(port.split("?")[0] or P.DEFAULT_PORT))
            ws_address = f"ws://127.0.0.1:{self._forwarder.start()}"
            if "?" in address:
                query = parse_qs(address.split("?", 1)[1])
        else:
            ws_address = address
            query = parse_qs(urlsplit(address if "://" in address else "ws://" + address).query)
        self.address = normalize_address(ws_address)
        self.token = token or _first(query, "token") or os.environ.get("LAYERSCOPE_AGENT_TOKEN") or None
        self.device = device or _first(query, "device") or None
        self.backend = backend or _first(query, "backend") or (P.BACKEND_COREML if self.device else None)
        if self.device and self.backend != P.BACKEND_COREML:
            raise TargetError(f"device={self.device} names an iPhone or iPad of a Mac agent, which runs Core ML: "
                              f"drop backend={self.backend} or use backend=coreml")
        self.compute_unit = compute_unit or _first(query, "unit") or None
        self.granularity = granularity or _first(query, "granularity") or "layer"
        if self.granularity not in P.GRANULARITIES:
            raise TargetError(f"granularity must be one of {', '.join(P.GRANULARITIES)}, got {self.granularity!r}")
        self.partial_every = partial_every
        self.connect_timeout, self.reply_timeout, self.stall_timeout = connect_timeout, reply_timeout, stall_timeout
        self._client: Optional[BridgeClient] = None
        self._workdir: Optional[Path] = None  # packages converted here for a Core ML backend
        self._description: Optional[dict] = None
        self._model_path: Optional[Path] = None
        self._sha256: Optional[str] = None
        self._settings: Optional[ProfileSettings] = None
        self._loaded: Optional[dict] = None
        self.last_partial: Optional[dict] = None
        self._source_keyed = False  # the last profile came back keyed by the ONNX source (layer map)
        # What the bridge itself cost (ms unless named otherwise): filled by prepare and profile.
        self.overhead: dict[str, Any] = {}

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> BridgeClient:
        if self._client is not None and self._client.connected:
            return self._client
        client = BridgeClient(self.address, self.token, self.connect_timeout, self.reply_timeout)
        start = time.perf_counter()
        try:
            client.connect()
        except TargetError as exc:
            cause = self._forwarder.last_error if self._forwarder is not None else None
            if cause is None:
                raise
            from engine.bridge.discovery import phone_route_hint
            raise TargetError(f"{self.requested_address}: the USB connection to device port "
                              f"{self._forwarder.device_port} failed ({cause}); nothing listens there unless an "
                              f"agent was started on the device; {phone_route_hint(self._forwarder.udid)}") from None
        self.overhead["connect_ms"] = (time.perf_counter() - start) * 1000.0
        self._client = client
        self._loaded = None
        return client

    def _ensure_ready(self, settings: ProfileSettings) -> BridgeClient:
        """Connected, the model uploaded and loaded with `settings`' session key (reconnects if needed)."""
        client = self._connect()
        if self._model_path is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        if self._loaded is None or self._settings is None or self._settings.session_key() != settings.session_key():
            self._upload_and_load(client, settings)
        return client

    def _upload_and_load(self, client: BridgeClient, settings: ProfileSettings) -> None:
        assert self._model_path is not None
        for attempt in (1, 2):
            start = time.perf_counter()
            upload = client.upload(self._model_path)
            self.overhead.update(upload_ms=(time.perf_counter() - start) * 1000.0, upload_bytes=upload.size,
                                 upload_cached=upload.cached)
            self._sha256 = upload.sha256
            wire = settings.to_dict()
            if settings.inputs not in ("random", "zeros"):
                inputs = client.upload(Path(settings.inputs))
                wire["inputs"] = f"upload:{inputs.sha256}"
            start = time.perf_counter()
            try:
                self._loaded = client.load(upload.sha256, self.backend, self.compute_unit, wire,
                                           device=self.device)
            except BridgeError as exc:
                # The agent found its cached copy damaged (or evicted it meanwhile): upload once more.
                if exc.code != "unknown_model" or attempt == 2:
                    raise
                self.overhead["reuploaded"] = True
                continue
            break
        self.overhead.update(load_client_ms=(time.perf_counter() - start) * 1000.0,
                             load_agent_ms=self._loaded["load_ms"]["median_ms"])
        self._settings = settings

    # -- Target interface -----------------------------------------------------------------

    def prepare(self, model_path, settings: Optional[ProfileSettings] = None) -> None:
        settings = settings or ProfileSettings()
        path = Path(model_path)
        if not path.exists():
            from engine.ir import ModelLoadError
            raise ModelLoadError(str(path), "no such file or directory")
        if self.backend == P.BACKEND_COREML and path.suffix == ".onnx":
            from engine.targets.iphone import package_for_coreml
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="layerscope-coreml-"))
            path, _ = package_for_coreml(path, settings, self._workdir)
        self._model_path = path
        self._loaded = None
        client = self._connect()
        self._upload_and_load(client, settings)

    def profile(self, settings: Optional[ProfileSettings] = None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None, model_path=None) -> Profile:
        if model_path is not None and (self._model_path is None or Path(model_path) != self._model_path):
            self.prepare(model_path, settings or self._settings or ProfileSettings())
        settings = settings or self._settings or ProfileSettings()
        try:
            client = self._ensure_ready(settings)
        except BridgeConnectionLost:
            self._client = None  # the agent restarted between calls: one more try, from scratch
            client = self._ensure_ready(settings)
        self.last_partial = None

        def on_progress(message: dict) -> None:
            if progress is not None:
                progress(int(message["done"]), int(message["total"]), str(message.get("message", "")))

        def on_partial(message: dict) -> None:
            self.last_partial = message["profile"]

        before = (client.stats.messages_sent + client.stats.messages_received, client.stats.bytes_received)
        start = time.perf_counter()
        try:
            reply = client.profile(settings.to_dict() if settings.inputs in ("random", "zeros")
                                   else {k: v for k, v in settings.to_dict().items() if k != "inputs"},
                                   self.granularity, self.partial_every, on_progress, on_partial, cancel,
                                   self.stall_timeout)
        except BridgeConnectionLost as exc:
            self._client = None
            self._loaded = None
            if exc.partial is None:
                raise BridgeConnectionLost(f"{exc} before any run was complete; nothing was measured", None) \
                    from None
            partial = self._to_profile(exc.partial)
            return replace(partial, complete=False,
                           error=f"{exc} after {partial.runs_completed} of {settings.runs} runs; the completed "
                                 "runs are kept")
        wall_ms = (time.perf_counter() - start) * 1000.0
        agent_ms = float(reply.get("agent_ms", {}).get("median_ms", 0.0))
        self.overhead.update(profile_client_ms=wall_ms, profile_agent_ms=agent_ms,
                             messages=client.stats.messages_sent + client.stats.messages_received - before[0],
                             result_bytes=client.stats.bytes_received - before[1],
                             messaging_ms=max(0.0, wall_ms - agent_ms))
        return self._to_profile(reply["profile"])

    def _to_profile(self, document: Mapping) -> Profile:
        try:
            profile = profile_from_document(document)
        except ProfileFormatError as exc:  # e.g. a figure without a valid kind: never read as measured
            raise TargetError(f"the agent at {self.address} sent a profile LayerScope cannot read: {exc}") \
                from None
        target = dict(profile.target)
        target.update({"name": "bridge", "address": self._public_address(), "protocol": P.PROTOCOL,
                       "agent": dict((self._client.welcome.get("agent") or {}) if self._client else {})})
        # A package uploaded with its layer map comes back keyed by the ONNX source nodes
        # (target["layer_map"]): the profile then names the source model, not the package.
        self._source_keyed = "layer_map" in target
        if self._source_keyed:
            model_path = str(self._source_model() or profile.model_path)
        else:
            model_path = str(self._model_path) if self._model_path else profile.model_path
        return replace(profile, target=target, model_path=model_path)

    def _public_address(self) -> str:
        """The address the person gave, without a token: usb://UDID:PORT keeps the device's UDID (the
        local forwarding port means nothing later); a ws:// address is the normalized one."""
        if self._forwarder is None:
            return self.address
        return self.requested_address.split("?", 1)[0]

    def _source_model(self) -> Optional[Path]:
        """The ONNX file a prepared .mlpackage was converted from (its layer map says), if it is here."""
        if self._model_path is None or not self._model_path.is_dir():
            return None
        from engine.convert.layermap import LayerMapError, load_layer_map
        try:
            source = Path(str(load_layer_map(self._model_path).get("source_model") or ""))
        except LayerMapError:
            return None
        return source if source.is_file() else None

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The input shapes the agent loaded the model with (free dimensions resolved there)."""
        if self._loaded is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        return {i["name"]: tuple(int(d) for d in i.get("shape") or ()) for i in self._loaded.get("inputs", ())
                if i.get("shape") and all(isinstance(d, int) for d in i["shape"])}

    @property
    def analysis(self):
        """Static analysis of the prepared model at the input shapes the agent runs (as CpuTarget.analysis)."""
        if self._model_path is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        source = self._source_model() if self._source_keyed else None
        if source is not None:
            # Results keyed by the ONNX nodes: the analysis of the source, at the shapes it was converted at.
            from engine.convert.layermap import load_layer_map
            shapes = load_layer_map(self._model_path).get("options", {}).get("input_shapes") or {}
            key = (str(source), tuple(sorted((k, tuple(v)) for k, v in shapes.items())))
        else:
            key = (str(self._model_path), tuple(sorted(self.input_shapes.items())) if self._loaded else ())
        if getattr(self, "_analysis_key", None) != key:
            from engine.analysis import analyze
            from importers import open_model
            shapes = {name: list(dims) for name, dims in key[1]} or None
            self._analysis = analyze(open_model(key[0], input_shapes=shapes))
            self._analysis_key = key
        return self._analysis

    def run(self, inputs: Optional[Mapping[str, Any]] = None) -> dict:
        settings = self._settings or ProfileSettings()
        client = self._ensure_ready(settings)
        reply = client.run(npz_b64(inputs) if inputs else None)
        if "outputs_npz_b64" not in reply:
            raise TargetError(f"the outputs are larger than the agent sends back in one message; shapes: "
                              f"{', '.join(str(o['shape']) for o in reply['outputs'])}")
        return arrays_from_npz_b64(reply["outputs_npz_b64"])

    def intermediates(self, names: Sequence[str], inputs: Optional[Mapping[str, Any]] = None,
                      sizes: Mapping[str, int] = {}) -> tuple[dict, dict]:
        """The named tensors of runs on the device: ({name: array}, the last reply without its arrays).

        Names go in batches whose arrays (`sizes`: expected bytes per name) fit the replies the
        agent may send; each batch is one run of the model on the device.
        """
        settings = self._settings or ProfileSettings()
        client = self._ensure_ready(settings)
        budget = max(1, int(client.limits.get("max_message_bytes", 64 * 1024 * 1024) // 2 * 0.7))
        encoded_inputs = npz_b64(inputs) if inputs else None
        batches: list[list[str]] = [[]]
        used = 0
        for name in names:
            size = int(sizes.get(name, 0) * 4 / 3) + 512
            if batches[-1] and used + size > budget:
                batches.append([])
                used = 0
            batches[-1].append(name)
            used += size
        arrays: dict = {}
        reply: dict = {}
        for batch in batches:
            if not batch:
                continue
            reply = client.intermediates(batch, encoded_inputs)
            stored = arrays_from_npz_b64(reply.pop("npz_b64"))
            for tensor in reply["tensors"]:
                arrays[tensor["name"]] = stored[tensor["key"]]
        return arrays, reply

    def describe(self) -> dict:
        if self._description is None:
            self._description = self._connect().describe()
        device = self._description["device"]
        backends = self._description["backends"]
        chosen = next((b for b in backends if b["name"] == (self.backend or P.BACKEND_ONNXRUNTIME)), {})
        if self.device:  # a phone of a Mac agent: its own description, from the agent's coreml backend
            phone = next((d for d in chosen.get("devices") or () if self.device in (d.get("udid"), d.get("identifier"))
                          or str(d.get("name", "")).casefold() == self.device.casefold()), None)
            if phone is None:
                notes = "; ".join(chosen.get("device_notes") or ()) or "none connected"
                raise TargetError(f"the agent at {self.address} has no iPhone or iPad {self.device!r} ({notes})")
            return {"name": "bridge", "address": self.address, "protocol": P.PROTOCOL, "device": phone["name"],
                    "udid": phone["udid"], "hardware_model": phone.get("hardware_model", ""),
                    "model_name": phone.get("model", ""), "os": f"{phone.get('os', '')} {phone.get('os_version', '')}",
                    "compute_units": list(phone.get("compute_units", ())), "backend": P.BACKEND_COREML,
                    "via": device.get("name", ""), "backends": backends}
        return {"name": "bridge", "address": self.address, "protocol": P.PROTOCOL,
                "device": device.get("name", ""), "hardware_model": device.get("hardware_model", ""),
                "os": f"{device.get('os', '')} {device.get('os_version', '')}".strip(),
                "chip": device.get("chip", ""), "memory_bytes": device.get("memory_bytes"),
                "compute_units": [u["name"] for u in chosen.get("compute_units", [])],
                "backend": chosen.get("name", ""), "backends": backends}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "BridgeTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first(query: Mapping[str, list[str]], key: str) -> Optional[str]:
    values = query.get(key)
    return values[0] if values else None
