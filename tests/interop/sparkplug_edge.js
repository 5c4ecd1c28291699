// A Sparkplug B edge node built on sparkplug-client (the Eclipse Tahu JavaScript client), an
// implementation independent of ours, so the tests prove the collector reads births, data by
// alias and deaths as another stack writes them. Usage: node sparkplug_edge.js MQTT_URL GROUP EDGE_NODE DEVICE
//
// On connecting it publishes NBIRTH (node metric Cabinet/Temperature = 24.5 degC, alias 10, plus
// the client's bdSeq) and DBIRTH (fill_weight = 2.0 g, alias 1; Filler/Speed = 300, Int32, alias 2),
// then prints "BORN". Commands on stdin, one per line, each answered with "DONE <command>":
//   data    DDATA by alias only: fill_weight = 2.004, Filler/Speed = -7
//   skip    lose a sequence number (the next message has a gap)
//   ddeath  DDEATH of the device
// An NCMD "Node Control/Rebirth" = true makes it publish its births again and print "REBIRTH".
// Killed without a DISCONNECT, the broker publishes its Last Will: the NDEATH with its bdSeq.
"use strict";
const readline = require("readline");
const sparkplug = require("sparkplug-client");

const [url, groupId, edgeNode, device] = process.argv.slice(2);
const client = sparkplug.newClient({
  serverUrl: url, groupId, edgeNode, clientId: `edge-${edgeNode}-${process.pid}`,
  username: "", password: "", version: "spBv1.0", publishDeath: true,
});
const now = () => Date.now();

function births() {
  client.publishNodeBirth({
    timestamp: now(),
    metrics: [
      { name: "Node Control/Rebirth", type: "Boolean", value: false },
      { name: "Cabinet/Temperature", alias: 10, type: "Float", value: 24.5,
        properties: { engUnit: { type: "String", value: "degC" } } },
    ],
  });
  client.publishDeviceBirth(device, {
    timestamp: now(),
    metrics: [
      { name: "fill_weight", alias: 1, type: "Double", value: 2.0, properties: { engUnit: { type: "String", value: "g" } } },
      { name: "Filler/Speed", alias: 2, type: "Int32", value: 300 },
    ],
  });
}

const commands = {
  data: () => client.publishDeviceData(device, {
    timestamp: now(),
    metrics: [{ alias: 1, type: "Double", value: 2.004 }, { alias: 2, type: "Int32", value: -7 }],
  }),
  skip: () => client.incrementSeqNum(),
  ddeath: () => client.publishDeviceDeath(device, { timestamp: now(), metrics: [] }),
};

client.on("birth", () => { births(); process.stdout.write("BORN\n"); });
client.on("ncmd", (payload) => {
  const rebirth = (payload.metrics || []).some((m) => m.name === "Node Control/Rebirth" && m.value === true);
  if (rebirth) { births(); process.stdout.write("REBIRTH\n"); }
});
client.on("error", (err) => { process.stderr.write(String(err) + "\n"); process.exit(1); });

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = commands[line.trim()];
  if (command === undefined) { process.stderr.write(`unknown command ${line}\n`); return; }
  command();
  process.stdout.write(`DONE ${line.trim()}\n`);
});
