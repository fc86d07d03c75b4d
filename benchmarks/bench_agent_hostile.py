"""The agent under hostile input: its peak memory per attack, and how fast it answers a ping meanwhile.

    python benchmarks/bench_agent_hostile.py [--model-mb 100] [--pings 40]

Starts `layerscope agent` (a real subprocess, loopback, default limits) and:

1. Memory: for each attack of issue 12, the agent's peak resident memory
   (VmHWM from /proc, reset before each attack with /proc/PID/clear_refs)
   minus its resident memory before.  Target: under 2 x max_message_bytes
   plus the model being served (the "served" column).
2. Responsiveness: the time a second connection waits for `pong` while the
   first connection uploads a large model, has an npz decoded (run) and
   loads that model.  Idle is the reference, measured in the same process.
   Target: under 100 ms.

Prints tables of medians (and the worst ping); this machine is noisy.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

MiB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-mb", type=int, default=100, help="size of the served model (upload, load)")
    parser.add_argument("--pings", type=int, default=40, help="pings per responsiveness scenario")
    args = parser.parse_args()

    from benchmarks.bench_bridge import big_onnx
    from tests.bridge_conformance.bridge_wire import Wire, start_agent_process, stop_agent_process
    from tests.bridge_conformance.test_conformance import upload
    from tests.bridge_conformance.test_hostile import (compressed_npz_declaring, constant_of_shape_bomb,
                                                       external_data_model, streamed_zip_entry)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = big_onnx(folder / "big.onnx", args.model_mb).read_bytes()
        agent = start_agent_process(folder / "agent", token=None)
        try:
            wire = Wire(agent.address)
            welcome = wire.hello(None)
            limits = welcome["limits"]
            max_message = limits["max_message_bytes"]
            print(f"agent {agent.address}: max_message_bytes {max_message / MiB:.0f} MiB, max_model_bytes "
                  f"{limits['max_model_bytes'] / MiB:.0f} MiB, load budget {limits['load_memory_bytes'] / MiB:.0f} "
                  f"MiB, served model {len(model) / MiB:.0f} MiB")

            def symlink_bomb() -> str:
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as zf:
                    zf.writestr("pkg.mlpackage/Manifest.json", "{}")
                    link = zipfile.ZipInfo("pkg.mlpackage/Data/weights")
                    link.external_attr = 0o120777 << 16
                    streamed_zip_entry(zf, link, 100 * MiB)
                return upload(wire, buffer.getvalue(), "bomb.mlpackage.zip", "mlpackage-zip").get("code", "ok")

            def zip_declaring_too_much() -> str:
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as zf:
                    zf.writestr("pkg.mlpackage/Manifest.json", "{}")
                    streamed_zip_entry(zf, zipfile.ZipInfo("pkg.mlpackage/w.bin"), limits["max_model_bytes"] + MiB,
                                       b"\0")
                return upload(wire, buffer.getvalue(), "big.mlpackage.zip", "mlpackage-zip").get("code", "ok")

            def frames_before_hello() -> str:
                frame = b"\0" * (15 * MiB)
                opened = []
                for _ in range(20):
                    try:
                        connection = Wire(agent.address)
                        opened.append(connection)
                        connection.send_raw(frame)
                    except Exception:
                        pass
                for connection in opened:
                    connection.close()
                return "closed"

            served_sha = hashlib.sha256(model).hexdigest()

            def upload_and_load_served() -> str:
                done = upload(wire, model, "big.onnx", "onnx", timeout=300)
                reply = wire.request({"type": "load", "model": done["sha256"]}, ("loaded",), timeout=300)
                return reply.get("code", reply["type"])

            def npz_bomb() -> str:
                encoded = base64.b64encode(compressed_npz_declaring(384 * MiB)).decode("ascii")
                return wire.request({"type": "run", "inputs_npz_b64": encoded}, ("run_result",), 60).get("code", "ok")

            def constant_bomb() -> str:
                done = upload(wire, constant_of_shape_bomb(1 << 17), "bomb.onnx", "onnx")
                return wire.request({"type": "load", "model": done["sha256"]}, ("loaded",), 60).get("code", "ok")

            def external_data() -> str:
                done = upload(wire, external_data_model("function"), "external.onnx", "onnx")
                return wire.request({"type": "load", "model": done["sha256"]}, ("loaded",), 60).get("code", "ok")

            def damaged_cache_entry() -> str:
                path = agent.cache_dir / "models" / served_sha / "model.onnx"
                data = bytearray(path.read_bytes())
                data[-1000] ^= 0xFF
                path.write_bytes(bytes(data))
                done = upload(wire, model, "big.onnx", "onnx", timeout=300)
                return "re-uploaded" if done.get("cached") is False else "served damaged!"

            def odd_settings() -> str:
                wire.send_raw('{"type": "profile", "id": "s", "settings": {"size": [1e400, 3], "threads": '
                              + "9" * 5000 + "}}")
                return wire.recv(10).get("code", "ok")

            attacks = [("upload + load of the served model (reference)", upload_and_load_served),
                       ("zip symlink whose target is a 100 MiB bomb", symlink_bomb),
                       ("zip declaring more than max_model_bytes", zip_declaring_too_much),
                       ("20 connections x 15 MiB frame before hello", frames_before_hello),
                       ("run with a 384 MiB npz compressed to <1 MiB", npz_bomb),
                       ("load of a ConstantOfShape making 64 GiB", constant_bomb),
                       ("load of a model with external data in a function", external_data),
                       ("cached model bytes flipped, then served", damaged_cache_entry),
                       ("settings with 1e400 and a 5000-digit integer", odd_settings)]
            bound = 2 * max_message + len(model)
            print()
            print(f"{'attack':52} {'answer':>16} {'peak growth MiB':>16} {'peak MiB':>9}")
            for name, attack in attacks:
                agent.reset_peak_rss()
                before = agent.rss_bytes()
                answer = attack()
                time.sleep(0.2)
                peak = agent.peak_rss_bytes()
                print(f"{name:52} {answer:>16} {(peak - before) / MiB:>16.1f} {peak / MiB:>9.0f}")
            print(f"bound: 2 x max_message_bytes + served model = {bound / MiB:.0f} MiB of growth")

            print()
            print(f"{'while':44} {'ping median ms':>15} {'ping max ms':>12} {'pings':>6}")
            pinger = Wire(agent.address)
            pinger.hello(None)

            def pings_during(work) -> list[float]:
                times: list[float] = []
                finished = threading.Event()

                def run() -> None:
                    try:
                        work()
                    finally:
                        finished.set()

                thread = threading.Thread(target=run)
                thread.start()
                while not finished.is_set() and len(times) < args.pings:
                    start = time.perf_counter()
                    pinger.request({"type": "ping"}, ("pong",), timeout=30)
                    times.append((time.perf_counter() - start) * 1000.0)
                    time.sleep(0.02)
                thread.join()
                return times

            # A model the agent does not have yet, made before timing: building it here holds this
            # process's GIL, which would delay the pinger thread, not the agent.
            other = bytearray(model)
            other[-10] ^= 0x01  # different weights, different sha256
            other = bytes(other)

            def fresh_upload() -> None:
                upload(wire, other, "other.onnx", "onnx", timeout=300)

            def npz_decode() -> None:
                arrays = {"x": np.random.default_rng(0).random(max_message // 3 // 4 * 3 // 4, dtype=np.float32)}
                buffer = io.BytesIO()
                np.savez(buffer, **arrays)
                wire.request({"type": "run", "inputs_npz_b64": base64.b64encode(buffer.getvalue()).decode()},
                             ("run_result",), 60)

            def load_served() -> None:
                wire.request({"type": "load", "model": served_sha, "settings": {"mode": "deployed"}}, ("loaded",),
                             300)

            from engine.samples import default_sample_path
            sample = default_sample_path().read_bytes()

            def load_sample() -> None:
                done = upload(wire, sample, "sample.onnx", "onnx")
                wire.request({"type": "load", "model": done["sha256"]}, ("loaded",), 300)

            scenarios = [("idle (reference)", lambda: time.sleep(1.0)),
                         (f"a load of the sample model ({len(sample) / 1e6:.1f} MB)", load_sample),
                         (f"a {args.model_mb} MB upload on another connection", fresh_upload),
                         ("an npz decode (run, max-size message)", npz_decode),
                         (f"a load of the {args.model_mb} MB model", load_served)]
            for name, work in scenarios:
                times = pings_during(work)
                print(f"{name:44} {statistics.median(times):>15.1f} {max(times):>12.1f} {len(times):>6}")
            pinger.close()
            wire.close()
        finally:
            stop_agent_process(agent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
