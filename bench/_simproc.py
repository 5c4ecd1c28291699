"""The simulator side of bench/simulator.py (and the OPC-UA part of bench/ingest.py): one process
running the project's simulator for a generated enterprise as fast as its servers take the values.

    python bench/_simproc.py serve --sites 3 --lines 22 --format batched_json --mqtt-url mqtt://... --seconds 20
    python bench/_simproc.py serve ... --mqtt-url none --opcua-url opc.tcp://127.0.0.1:4841/sim
    python bench/_simproc.py plant --sites 3 --lines 22 --seconds 10     # stepping alone, no server
    python bench/_simproc.py replay --mqtt-url ... --replay FILE --seconds 10  # bare aiomqtt publish loop

serve: SimulatorService ticks back to back (simulated time advancing one tick each), with
backpressure: the next tick waits until every MQTT connection has sent all but a few queued
ticks, so nothing is dropped and the rate is what the process sustains. Each mode also reports
the CPU time it used (`cpu_s`): on a shared machine, values per CPU-second says what the process
would sustain on a core of its own. replay: the messages of
FILE (JSON lines: topic, payload as hex, qos) published again and again, a tick's worth
(`--chunk`) at a time: paho's publish for each, awaiting (aiomqtt) the last one's acknowledgement. Each mode prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUEUE_AHEAD = 2  # ticks a connection may have queued before the next tick waits


def enterprise(sites: int, lines: int, fmt: str | None):
    from simulators.enterprise import build_enterprise

    site = build_enterprise(sites, lines, seed=7)
    if fmt:
        site = site.model_copy(update={"simulation": site.simulation.model_copy(update={"mqtt_payload": fmt})})
    return site


async def serve(args) -> dict:
    from simulators.service import SimulatorService

    site = enterprise(args.sites, args.lines, args.format)
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        service = SimulatorService(site, data_dir=Path(tmp), mqtt_url=None if args.mqtt_url == "none" else args.mqtt_url,
                                   opcua_url=None if args.opcua_url == "none" else args.opcua_url)
        await service.start()
        try:
            if service.mqtt is not None:
                await asyncio.wait_for(service.mqtt.connected.wait(), 30)
            print(json.dumps({"ready": True, "tags": len(site.tag_table())}), flush=True)
            await asyncio.sleep(args.wait)  # the subscriber connects meanwhile
            started, cpu = time.monotonic(), time.process_time()
            deadline = started + args.seconds
            ticks = values = 0
            while time.monotonic() < deadline:
                frame = service.plant.step(service.tick_s)  # what SimulatorService.tick does, minus the sleep
                states = service.plant.unit_states()
                events = service._transitions.update(states, service.plant.now)
                if service.opcua is not None:
                    await service.opcua.publish(frame, states, events)
                if service.mqtt is not None:
                    service.mqtt.publish(frame, states, events)
                    while any(c.queue.qsize() > QUEUE_AHEAD for c in service.mqtt.connections):
                        await asyncio.sleep(0.001)
                else:
                    await asyncio.sleep(0)
                ticks += 1
                values += frame.height
            elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
            stats = service.mqtt_stats
            return {"ticks": ticks, "values": values, "seconds": elapsed, "cpu_s": cpu,
                    "published": stats.published if stats else None, "dropped": stats.dropped if stats else None}
        finally:
            await service.stop()


def plant_alone(args) -> dict:
    from simulators.plant import Plant

    site = enterprise(args.sites, args.lines, None)
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        plant = Plant(site, seed=7, ground_truth=Path(tmp) / "ground_truth.csv")
        tick_s = site.simulation.tick_ms / 1000
        plant.step(tick_s)
        started, cpu = time.monotonic(), time.process_time()
        steps = values = 0
        while time.monotonic() - started < args.seconds:
            values += plant.step(tick_s).height
            plant.unit_states()
            steps += 1
        return {"ticks": steps, "values": values, "seconds": time.monotonic() - started,
                "cpu_s": time.process_time() - cpu}


async def replay(args) -> dict:
    import aiomqtt

    from simulators.mqtt_publisher import parse_mqtt_url

    messages = [json.loads(line) for line in Path(args.replay).read_text().splitlines() if line]
    messages = [(m["topic"], bytes.fromhex(m["payload"]), m["qos"]) for m in messages]
    host, port = parse_mqtt_url(args.mqtt_url)
    async with aiomqtt.Client(host, port, max_inflight_messages=1000) as client:
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.sleep(args.wait)
        started, cpu = time.monotonic(), time.process_time()
        sent = 0
        chunks = [messages[i:i + args.chunk] for i in range(0, len(messages), args.chunk)]
        while time.monotonic() - started < args.seconds:
            for chunk in chunks:
                # A tick's worth at a time: paho's publish queues each, the last one's
                # acknowledgement is awaited (the broker acknowledges in order).
                for topic, payload, qos in chunk[:-1]:
                    client._client.publish(topic, payload, qos)
                topic, payload, qos = chunk[-1]
                await client.publish(topic, payload, qos=qos)
            sent += len(messages)
        return {"messages": sent, "seconds": time.monotonic() - started, "cpu_s": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["serve", "plant", "replay"])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--lines", type=int, default=22)
    parser.add_argument("--format", default=None)
    parser.add_argument("--mqtt-url", default="none")
    parser.add_argument("--opcua-url", default="none")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--wait", type=float, default=1.0, help="seconds between ready and the clock starting")
    parser.add_argument("--replay", help="replay: the messages file")
    parser.add_argument("--chunk", type=int, default=1, help="replay: messages per tick, published together")
    args = parser.parse_args()
    if args.mode == "plant":
        result = plant_alone(args)
    else:
        result = asyncio.run(serve(args) if args.mode == "serve" else replay(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
