"""The device bridge: protocol, agent, desktop client, discovery, transfer calibration.

    engine.bridge.protocol     layerscope-bridge/1 wire format (docs/bridge-protocol.md)
    engine.bridge.agent        the Python reference agent (`layerscope agent`)
    engine.bridge.backends     the agent's backends: ONNX Runtime, Core ML (macOS only)
    engine.bridge.cache        the agent's model cache: resumable uploads, safe unpacking, LRU
    engine.bridge.client       desktop side: one synchronous connection to an agent
    engine.bridge.discovery    typed addresses, mDNS, iPhones over USB (`layerscope devices`)
    engine.bridge.calibration  transfer cost per compute unit and the estimates it gives
    engine.bridge.results      merging batches of runs, re-keying transfers, checking kinds

The Target for the desktop is engine.targets.bridge.BridgeTarget
(`get_target("ws://HOST:PORT")`).  Nothing here imports Qt, and importing the
package needs neither websockets nor the optional `devices` extra: modules
import them when used.
"""
from engine.bridge.protocol import DEFAULT_PORT, PROTOCOL

__all__ = ["DEFAULT_PORT", "PROTOCOL"]
