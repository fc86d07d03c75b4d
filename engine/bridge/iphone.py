"""iPhones and iPads as Core ML devices of a Mac, through coremltools 9's ModelRunner app.

There is no LayerScope app for iOS.  The device-side program is Apple's ModelRunner,
which coremltools (`coremltools.models.ml_program.experimental.remote_device`) builds
with `xcodebuild` and the user's signing team, installs with `xcrun devicectl`, and
drives through a JSON-RPC over copied files (`MLModelService.Load / Prediction /
ComputePlan / Unload`).  The app times each load and prediction on the device.

    devices, notes = list_phones()                        # xcrun devicectl, iPhones and iPads
    session = open_phone_session(backend, model, "ALL", settings, "Anna's iPhone")
    profile = session.profile(settings, "segment", None, progress, partial, cancel)

What each figure of a phone profile is (docs/iphone.md):

- load time, and each prediction's time: `measured` on the phone by ModelRunner (the
  file copies between the Mac and the phone are not in them);
- per-op compute unit: `planned` (the phone's compute plan: preferred device, and the
  devices that could run it), "unknown" where the plan says nothing;
- per-op time: `attributed`, a measured (or derived) total split by the plan's cost weights;
- segment times: `derived` (prefix model k minus prefix model k-1, each prefix timed on
  the phone), shown beside the measured time of the prefix that ends with the segment;
- transfers between units: bytes from shapes; no time (nothing on the phone is calibrated).

Everything Apple-specific goes through `ModelRunnerApi`, whose defaults call coremltools;
the tests replace its parts the way coremltools' own tests do (an in-process device
service answering Load/Prediction/ComputePlan, a fake `xcrun devicectl` on PATH).  The
Mac-only parts (xcodebuild, devicectl, the phone) have not run on hardware here.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from engine.targets.settings import ProfileSettings, TargetError

__all__ = ["ModelRunnerApi", "list_phones", "find_phone", "open_phone_session", "team_id", "save_team_id",
           "FIRST_USE", "TEAM_ENV", "LINUX_HINT", "phone_problem", "plan_from_remote"]

TEAM_ENV = "LAYERSCOPE_TEAM_ID"
PHONE_TYPES = ("iphone", "ipad")
# Where ModelRunner keeps its request and response files in its data container (coremltools' value).
MODELRUNNER_SOURCE = "Documents/modelrunnerd"

FIRST_USE = (
    "Profiling on an iPhone or iPad goes through Apple's ModelRunner app, which coremltools builds and "
    "installs from this Mac (there is no LayerScope app for iOS). Needed once: "
    "(1) Xcode with its command-line tools (`xcode-select -p` prints a path) and coremltools 9 from its macOS "
    "wheel (`pip install coremltools`); "
    "(2) your Apple signing team id (10 characters; Xcode > Settings > Accounts, or developer.apple.com > "
    f"Membership): pass --team ID, or set {TEAM_ENV}, or save it once with --team ID --save-team; "
    "(3) the phone connected by cable, unlocked, with 'Trust This Computer' accepted; "
    "(4) Developer Mode on (Settings > Privacy & Security > Developer Mode; the phone restarts). "
    "The first profile builds and installs ModelRunner (a few minutes); later profiles reuse it.")

LINUX_HINT = ("to profile an iPhone from this computer, run `layerscope agent --listen 0.0.0.0:7878 "
              "--generate-token` on a Mac with Xcode that the phone is connected to, then `layerscope profile MODEL "
              "--target 'ws://MAC:7878?device=PHONE&token=TOKEN'` here with the token it prints (docs/iphone.md)")


# ============================================================================ team id

def _settings_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "layerscope" / "iphone.json"


def team_id(given: Optional[str] = None) -> str:
    """The signing team: the option, else the environment variable, else the saved setting, else ""."""
    if given:
        return given.strip()
    if os.environ.get(TEAM_ENV):
        return os.environ[TEAM_ENV].strip()
    try:
        return str(json.loads(_settings_file().read_text(encoding="utf-8")).get("team_id", "")).strip()
    except (OSError, ValueError, AttributeError):
        return ""


def save_team_id(team: str) -> Path:
    path = _settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"team_id": team.strip()}), encoding="utf-8")
    return path


# ============================================================================ the seam to coremltools

class _QuietProgress:
    """coremltools wraps every file copy to and from the phone in a tqdm bar (two per prediction):
    hundreds of bars on the agent's terminal per profile.  LayerScope reports progress itself."""

    @staticmethod
    def tqdm(iterable=None, *args, **kwargs):
        return iterable if iterable is not None else range(0)


def _remote_device():
    try:
        from coremltools.models.ml_program.experimental import remote_device
    except Exception as exc:  # ImportError, or an older coremltools without it
        raise TargetError(f"coremltools 9 with its remote-device support is needed to profile on an iPhone "
                          f"({type(exc).__name__}: {exc}): pip install 'coremltools>=9'") from None
    remote_device._tqdm = _QuietProgress
    return remote_device


def _devicectl_devices() -> dict:
    """`xcrun devicectl list devices` as JSON, through coremltools' own runner of devicectl."""
    return _remote_device()._DeviceCtl._run_command("xcrun devicectl list devices")


async def _prepare_with_modelrunner(device, credentials, working_directory: Path):
    return await device.prepare_for_model_debugging(credentials=credentials, working_directory=working_directory)


def _devicectl_service(device):
    rd = _remote_device()
    return rd._DeviceCtlRemoteService(socket=rd._DeviceCtlSocket(device=device, source=MODELRUNNER_SOURCE))


def _compile_package(package: Path, destination: Path) -> Path:
    from coremltools.models.utils import compile_model
    return Path(compile_model(str(package), destination_path=str(destination)))


@dataclass
class ModelRunnerApi:
    """The calls into coremltools (and through it Xcode and the phone) that a phone profile makes.

    list_devices() -> devicectl's JSON; prepare(device, credentials, working_directory) -> an
    awaitable of the prepared coremltools Device (ModelRunner built, installed, launched);
    remote_service(prepared device) -> a coremltools `_RemoteService`; compile(package, folder)
    -> the .mlmodelc path.  The defaults are coremltools'; tests give fakes of these parts.
    """

    list_devices: Callable[[], dict] = _devicectl_devices
    prepare: Callable[..., Any] = _prepare_with_modelrunner
    remote_service: Callable[[Any], Any] = _devicectl_service
    compile: Callable[[Path, Path], Path] = _compile_package


# ============================================================================ errors

def phone_problem(exc: BaseException, device_name: str = "the phone") -> TargetError:
    """A TargetError that says what went wrong with the phone and what to do.

    devicectl's and xcodebuild's messages are matched by the words they use (the wording is
    Apple's and changes between Xcode releases; an unmatched one is passed on whole)."""
    text = str(getattr(exc, "message", None) or exc)
    lowered = text.lower()
    if "locked" in lowered or "passcode" in lowered:
        return TargetError(f"{device_name} is locked: unlock it, keep it unlocked while profiling, and try again "
                           f"({text})")
    if "not installed" in lowered or "no application" in lowered or "unable to locate" in lowered \
            or "app is not" in lowered:
        return TargetError(f"ModelRunner is not installed on {device_name} (deleted, or never installed): the "
                           f"next profile builds and installs it again with your signing team ({text})")
    if "session is not active" in lowered or "not prepared" in lowered:
        return TargetError(f"ModelRunner stopped running on {device_name} (closed, or the phone locked or went to "
                           "sleep): unlock the phone and profile again; LayerScope relaunches it")
    if "disconnect" in lowered or "not connected" in lowered or "no device" in lowered \
            or "device was not found" in lowered or "unavailable" in lowered:
        return TargetError(f"{device_name} disconnected: reconnect the cable, unlock the phone and profile again "
                           f"({text})")
    if "signing" in lowered or "provisioning" in lowered or "development team" in lowered \
            or "development_team" in lowered or "code sign" in lowered:
        return TargetError(f"Xcode could not sign ModelRunner for {device_name}: check the team id "
                           f"(--team or {TEAM_ENV}) and that this Mac is signed in to that team in Xcode > "
                           f"Settings > Accounts ({text})")
    if "developer mode" in lowered:
        return TargetError(f"Developer Mode is off on {device_name}: Settings > Privacy & Security > Developer "
                           f"Mode, then restart the phone ({text})")
    if "xcodebuild" in lowered or "devicectl" in lowered or "model runner directory" in lowered \
            or "workspace directory" in lowered:
        return TargetError(f"{text}. {FIRST_USE}")
    return TargetError(f"{device_name}: {type(exc).__name__}: {text}")


# ============================================================================ listing

def _phone_entry(raw: Mapping) -> Optional[dict]:
    """One device of devicectl's JSON as a description entry; None for Macs, watches and the like."""
    device_properties = raw.get("deviceProperties") or {}
    hardware = raw.get("hardwareProperties") or {}
    connection = raw.get("connectionProperties") or {}
    kind = str(hardware.get("deviceType", "")).lower()
    if kind not in PHONE_TYPES:
        return None
    state = str(connection.get("tunnelState", "unknown")).lower()
    developer_mode = str(device_properties.get("developerModeStatus", ""))
    entry = {"name": str(device_properties.get("name", "")), "udid": str(hardware.get("udid", "")),
             "identifier": str(raw.get("identifier", "")), "type": kind,
             "model": str(hardware.get("marketingName") or hardware.get("productType") or ""),
             "hardware_model": str(hardware.get("productType", "")), "os": "iPadOS" if kind == "ipad" else "iOS",
             "os_version": str(device_properties.get("osVersionNumber", "")),
             "os_build": str(device_properties.get("osBuildUpdate", "")), "developer_mode": developer_mode,
             "state": state, "compute_units": ["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"]}
    problems = []
    if state != "connected":
        problems.append(f"not connected ({state}): connect it by cable, unlock it and trust this Mac")
    if developer_mode and developer_mode.lower() != "enabled":
        problems.append("Developer Mode is off: Settings > Privacy & Security > Developer Mode")
    entry["ready"] = not problems
    if problems:
        entry["detail"] = "; ".join(problems)
    return entry


def list_phones(api: Optional[ModelRunnerApi] = None) -> tuple[list[dict], list[str]]:
    """(iPhones and iPads devicectl knows, notes).  Never raises: a missing tool becomes a note."""
    if sys.platform != "darwin" and api is None:
        return [], [f"iPhones as Core ML devices need a Mac: {LINUX_HINT}"]
    api = api or ModelRunnerApi()
    try:
        document = api.list_devices()
    except TargetError as exc:
        return [], [str(exc)]
    except Exception as exc:
        text = str(getattr(exc, "message", None) or exc)
        return [], [f"xcrun devicectl could not list devices ({type(exc).__name__}: {text}); install Xcode 15 or "
                    "later with its command-line tools"]
    devices = ((document or {}).get("result") or {}).get("devices")
    if not isinstance(devices, Sequence):
        return [], ["xcrun devicectl answered without a device list"]
    entries = [entry for entry in (_phone_entry(d) for d in devices if isinstance(d, Mapping))
               if entry is not None and entry["udid"]]
    notes = [] if entries else ["no iPhone or iPad known to this Mac: connect one by cable, unlock it and trust "
                                "this Mac"]
    return entries, notes


def find_phone(wanted: str, entries: Sequence[Mapping]) -> dict:
    """The entry whose UDID, devicectl identifier or name is `wanted` (names case-insensitively)."""
    for entry in entries:
        if wanted in (entry["udid"], entry["identifier"]):
            return dict(entry)
    named = [e for e in entries if e["name"].casefold() == wanted.casefold()]
    if len(named) == 1:
        return dict(named[0])
    if len(named) > 1:
        raise TargetError(f"{len(named)} devices are named {wanted!r}: give the UDID instead "
                          f"({', '.join(e['udid'] for e in named)})")
    known = ", ".join(f"{e['name']} ({e['udid']})" for e in entries) or "none"
    raise TargetError(f"no iPhone or iPad {wanted!r} is connected to this Mac; known: {known}")


# ============================================================================ a prepared phone

class PhoneLink:
    """One phone with ModelRunner running, and the event loop coremltools' async calls run on.

    coremltools' device service captures the event loop it is created on and runs its
    file copies in that loop's executor, so every call for this phone goes through
    `self.run(...)` on one private loop (the agent calls from one job thread at a time).
    """

    def __init__(self, entry: Mapping, api: ModelRunnerApi, team: str, working_directory: Path):
        self.entry = dict(entry)
        self.name = self.entry["name"] or self.entry["udid"]
        self.api = api
        self.team = team
        self.working_directory = working_directory
        self.loop = asyncio.new_event_loop()
        self.device = None        # the prepared coremltools Device
        self._lock = threading.Lock()

    def run(self, coroutine):
        with self._lock:
            return self.loop.run_until_complete(coroutine)

    def _coremltools_device(self):
        rd = _remote_device()
        entry = self.entry
        return rd.Device(name=entry["name"], type=rd.DeviceType(entry["type"]), identifier=entry["identifier"],
                         udid=entry["udid"], os_version=entry["os_version"], os_build_number=entry["os_build"],
                         developer_mode_state=entry["developer_mode"], state=rd.DeviceState(entry["state"]),
                         session=None)

    def alive(self) -> bool:
        session = getattr(self.device, "session", None)
        return session is not None and bool(session.is_alive())

    def prepare(self, progress: Callable[[str], None] = lambda message: None) -> None:
        """Build (first time), install and launch ModelRunner unless it runs already."""
        if self.alive():
            return
        if not self.entry.get("ready", True):
            raise TargetError(f"{self.name}: {self.entry.get('detail', 'not ready')}")
        if not self.team:
            raise TargetError(f"no signing team id for ModelRunner. {FIRST_USE}")
        rd = _remote_device()
        credentials = rd.AppSigningCredentials(development_team=self.team)
        self.working_directory.mkdir(parents=True, exist_ok=True)
        progress(f"preparing {self.name}: building and installing ModelRunner (minutes the first time)")
        try:
            self.device = self.run(self.api.prepare(self._coremltools_device(), credentials,
                                                    self.working_directory))
        except TargetError:
            raise
        except Exception as exc:
            raise phone_problem(exc, self.name) from None

    def close(self) -> None:
        session = getattr(self.device, "session", None)
        if session is not None:
            try:
                session.stop()
            except Exception:
                pass
        self.device = None


_links: dict[str, PhoneLink] = {}
_links_lock = threading.Lock()


def _link_for(entry: Mapping, api: ModelRunnerApi, team: str) -> PhoneLink:
    """The phone's link, reused across sessions (ModelRunner stays installed and running)."""
    root = Path(os.environ.get("LAYERSCOPE_MODELRUNNER_DIR")
                or Path(tempfile.gettempdir()) / "layerscope-modelrunner")
    with _links_lock:
        link = _links.get(entry["udid"])
        if link is None or link.api is not api or link.team != team:
            link = PhoneLink(entry, api, team, root / entry["udid"])
            _links[entry["udid"]] = link
        else:
            link.entry = dict(entry)
        return link


# ============================================================================ a model on the phone

NANOSECONDS_PER_MS = 1_000_000.0


class RemoteModel:
    """One compiled model loaded in ModelRunner with one compute-unit setting."""

    def __init__(self, link: PhoneLink, compiled_path: Path, setting: str):
        rd = _remote_device()
        import coremltools as ct
        self.link = link
        units = getattr(ct.ComputeUnit, setting)

        async def create():
            # coremltools' service must be made inside the loop it will run on (it captures it).
            if self.link.device is None or self.link.device.session is None or not self.link.alive():
                raise TargetError(f"ModelRunner is not running on {self.link.name}: it stopped (closed, or the "
                                  "phone locked); profile again to relaunch it")
            service = rd._RemoteMLModelService(service=self.link.api.remote_service(self.link.device),
                                               compiled_model_path=compiled_path, compute_units=units)
            await service.load()
            return service

        self.service = self._call(create())
        nanoseconds = self.service.load_duration_in_nano_seconds
        self.load_ms = None if nanoseconds is None else float(nanoseconds) / NANOSECONDS_PER_MS

    def _call(self, coroutine):
        try:
            return self.link.run(coroutine)
        except TargetError:
            raise
        except Exception as exc:
            raise phone_problem(exc, self.link.name) from None

    def predict(self, feed: Mapping[str, np.ndarray]) -> tuple[dict, Optional[float]]:
        """(outputs, the prediction's time on the phone in ms, None if ModelRunner did not say)."""
        outputs = self._call(self.service.predict(dict(feed)))
        nanoseconds = self.service.last_predict_duration_in_nano_seconds
        return outputs, None if nanoseconds is None else float(nanoseconds) / NANOSECONDS_PER_MS

    def compute_plan(self):
        return self._call(self.service.retrieve_compute_plan())

    def unload(self) -> None:
        try:
            self._call(self.service.unload())
        except TargetError:
            # The phone went away: nothing is left to unload.  Mark it so, or coremltools'
            # __del__ sends a fire-and-forget Unload that can never run (an unawaited coroutine).
            self.service._state = _remote_device()._RemoteMLModelService.State.Unloaded


def plan_from_remote(plan) -> tuple[dict[str, tuple[str, Optional[float]]], dict[str, dict]]:
    """Op id -> (planned unit, cost weight) and op id -> {preferred, supported, cost} from the phone's
    compute plan (coremltools' remote `ComputePlan`, keyed by model-structure paths).

    The op id is the last component of the path: a program operation's output name (our
    importer's node id) or a neural-network layer's name."""
    from engine.bridge.backends import plan_unit
    units: dict[str, tuple[str, Optional[float]]] = {}
    details: dict[str, dict] = {}
    for path, info in (getattr(plan, "infos", None) or {}).items():
        last = path.components[-1] if path.components else None
        op_id = getattr(last, "output_name", None) or getattr(last, "name", None)
        if not op_id:
            continue
        usage = info.device_usage
        preferred = plan_unit(usage.preferred if usage is not None else None)
        cost = float(info.estimated_cost) if info.estimated_cost is not None else None
        units.setdefault(op_id, (preferred, cost))
        details.setdefault(op_id, {"preferred": preferred,
                                   "supported": [plan_unit(d) for d in (usage.supported if usage else ())],
                                   "cost": cost})
    return units, details


def open_phone_session(backend, model, setting: str, settings: ProfileSettings, device: str,
                       api: Optional[ModelRunnerApi] = None, team: Optional[str] = None,
                       progress: Callable[[str], None] = lambda message: None):
    """A CoreMLSession whose model runs on the phone `device` (name, UDID or devicectl identifier)."""
    from engine.bridge.backends import PhoneSession
    if api is None and sys.platform != "darwin":
        raise TargetError(f"iPhones are driven from a Mac (Xcode's devicectl and xcodebuild): {LINUX_HINT}")
    api = api or ModelRunnerApi()
    entries, notes = list_phones(api)
    if not entries and notes:
        raise TargetError("; ".join(notes))
    entry = find_phone(device, entries)
    link = _link_for(entry, api, team_id(team))
    link.prepare(progress)
    return PhoneSession(backend, model, setting, settings, link)


def close_links() -> None:
    """Stop ModelRunner sessions this process started (the agent calls it when it stops)."""
    with _links_lock:
        for link in _links.values():
            link.close()
            link.loop.close()
        _links.clear()

