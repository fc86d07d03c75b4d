"""Bridge accuracy and cost: MobileUNet through a loopback agent vs the in-process CPU reference.

    python benchmarks/bench_bridge.py [--runs 30] [--rounds 2] [--upload-mb 100]

1. Accuracy: the same settings profiled in this process (engine.targets.cpu)
   and through `layerscope agent` on 127.0.0.1 (a real subprocess), alternated
   over `rounds` rounds so both see the same machine state.  For every layer
   above 2 % of the reference time: |bridge median - reference median| /
   reference median.  Target: within 15 %.
2. The bridge's own cost per profile: connect, upload (first and cached),
   load, and the messaging (client wall time - agent wall time).
3. Upload of a 100 MB ONNX model on loopback (client hashing + transfer + the
   agent's hash check).  Target: under 3 s.

Prints a table; machines here are noisy, so the figures are medians and ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def big_onnx(path: Path, megabytes: int) -> Path:
    """An ONNX model whose weights take `megabytes` MB (a MatMul with a large weight)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    columns = 1024
    rows = megabytes * 1024 * 1024 // (4 * columns)
    weight = numpy_helper.from_array(np.random.default_rng(0).random((rows, columns), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, columns])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--upload-mb", type=int, default=100)
    args = parser.parse_args()

    from engine.bridge.client import BridgeClient
    from engine.samples import default_sample_path
    from engine.targets import ProfileSettings, get_target
    from tests.bridge_conformance.bridge_wire import start_agent_process, stop_agent_process

    sample = default_sample_path()
    settings = ProfileSettings(runs=args.runs, warmup=args.warmup)
    work = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    agent = start_agent_process(work, extra=("--max-model-mb", str(args.upload_mb * 2)))
    try:
        reference = get_target("cpu")
        bridge = get_target(agent.address)
        t0 = time.perf_counter()
        bridge.prepare(sample, settings)
        first_prepare_ms = (time.perf_counter() - t0) * 1000
        first_overhead = dict(bridge.overhead)
        reference.prepare(sample, settings)
        ref_samples: dict[str, list[float]] = {}
        bridge_samples: dict[str, list[float]] = {}
        ref_e2e: list[float] = []
        bridge_e2e: list[float] = []
        overheads = []
        walls: dict[str, list[float]] = {"reference": [], "bridge": []}
        for _ in range(args.rounds):
            for name, target, store, e2e in (("reference", reference, ref_samples, ref_e2e),
                                             ("bridge", bridge, bridge_samples, bridge_e2e)):
                start = time.perf_counter()
                profile = target.profile(settings)
                walls[name].append((time.perf_counter() - start) * 1000)
                assert profile.complete, profile.error
                e2e += profile.end_to_end.samples_ms
                for node in profile.nodes.values():
                    store.setdefault(node.node_id, []).extend(node.time.samples_ms)
                if name == "bridge":
                    overheads.append(dict(bridge.overhead))
        reference.close()

        # Cached re-upload (what a second profile of the same model costs after a reconnect).
        client = BridgeClient(agent.address)
        client.connect()
        t0 = time.perf_counter()
        client.upload(sample)
        cached_upload_ms = (time.perf_counter() - t0) * 1000
        ping_ms = statistics.median(client.ping() for _ in range(20))
        t0 = time.perf_counter()
        BridgeClient(agent.address).connect()
        warm_connect_ms = (time.perf_counter() - t0) * 1000

        # 100 MB upload.
        big = big_onnx(work / "big.onnx", args.upload_mb)
        size_mb = big.stat().st_size / 1e6
        t0 = time.perf_counter()
        done = client.upload(big)
        upload_s = time.perf_counter() - t0
        assert not done.cached
        t0 = time.perf_counter()
        again = client.upload(big)
        cached_big_s = time.perf_counter() - t0
        assert again.cached
        client.close()
        bridge.close()
    finally:
        stop_agent_process(agent)

    ref_medians = {k: statistics.median(v) for k, v in ref_samples.items()}
    bridge_medians = {k: statistics.median(v) for k, v in bridge_samples.items()}
    total = sum(ref_medians.values())
    heavy = [k for k, v in ref_medians.items() if v / total > 0.02]
    deviations = {k: abs(bridge_medians[k] - ref_medians[k]) / ref_medians[k] for k in heavy}
    within = [k for k, d in deviations.items() if d <= 0.15]

    print(f"MobileUNet sample ({sample.name}), {args.rounds} rounds x {args.runs} runs, warm-up {args.warmup}, "
          f"mode {settings.mode}")
    print(f"{'layer (> 2 % of time)':44s} {'reference ms':>12s} {'bridge ms':>10s} {'deviation':>9s}")
    for k in sorted(heavy, key=lambda k: -ref_medians[k]):
        print(f"{k[:44]:44s} {ref_medians[k]:12.3f} {bridge_medians[k]:10.3f} {deviations[k] * 100:8.1f}%")
    print(f"layers above 2 %: {len(heavy)}; within 15 %: {len(within)}/{len(heavy)}; median deviation "
          f"{statistics.median(deviations.values()) * 100:.1f} %; worst {max(deviations.values()) * 100:.1f} %")
    print(f"end-to-end median: reference {statistics.median(ref_e2e):.2f} ms, bridge "
          f"{statistics.median(bridge_e2e):.2f} ms; sum of layer medians: reference {total:.2f} ms, bridge "
          f"{sum(bridge_medians.values()):.2f} ms")
    print()
    print("bridge overhead (loopback)")
    print(f"  connect + hello (first / again)   {first_overhead['connect_ms']:8.1f} / {warm_connect_ms:.1f} ms"
          "  (the first includes importing websockets)")
    print(f"  upload {first_overhead['upload_bytes'] / 1e6:.1f} MB (first)            "
          f"{first_overhead['upload_ms']:8.1f} ms")
    print(f"  upload again (cache hit)          {cached_upload_ms:8.1f} ms")
    print(f"  load: agent measured / client     {first_overhead['load_agent_ms']:8.1f} / "
          f"{first_overhead['load_client_ms']:.1f} ms")
    print(f"  prepare total (first)             {first_prepare_ms:8.1f} ms")
    messaging = [o["messaging_ms"] for o in overheads]
    print(f"  messaging per profile             {statistics.median(messaging):8.1f} ms  (client wall - agent "
          f"wall; {overheads[-1]['messages']} messages, result {overheads[-1]['result_bytes'] / 1e3:.0f} kB)")
    print(f"  profile wall in-process / bridge  {statistics.median(walls['reference']):8.1f} / "
          f"{statistics.median(walls['bridge']):.1f} ms  (per round: {', '.join(f'{w:.0f}' for w in walls['bridge'])}"
          " ms; the bridge re-warms once per batch, and its first profile calibrates transfers)")
    print(f"  ping round trip                   {ping_ms:8.2f} ms")
    print()
    print(f"upload of a {size_mb:.0f} MB model on loopback: {upload_s:.2f} s ({size_mb / upload_s:.0f} MB/s; "
          f"target < 3 s); again as a cache hit {cached_big_s:.2f} s (client hashing only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
