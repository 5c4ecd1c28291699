// An OPC-UA server built on node-opcua, an implementation independent of asyncua, so the tests
// prove the collector reads a server we did not write. Usage: node opcua_server.js PORT PKI_DIR
// Serves ns=1;s=Line1.Temperature and ns=1;s=Line1.Pressure (AnalogItems with EURange 0..100 and
// 0..10, Double, degC / bar) and ns=1;s=Line1.Speed (a plain Double variable: no EURange), updated
// every 200 ms with a source timestamp: temperature = 37 + 0.001 * n, pressure = 1.5 + 0.0001 * n,
// speed = n. Offers no security, Sign and SignAndEncrypt (Basic256Sha256 among others), accepts
// any client certificate and anonymous users. Prints "CERT <path of its certificate, PEM>" and
// then "READY <endpoint url>" on stdout once listening.
"use strict";
const path = require("path");
const {
  OPCUAServer, OPCUACertificateManager, Variant, DataType, StatusCodes, standardUnits,
} = require("node-opcua");

async function main() {
  const port = Number(process.argv[2]);
  const pki = process.argv[3];
  const certificateManager = new OPCUACertificateManager({ rootFolder: path.join(pki, "pki"), automaticallyAcceptUnknownCertificate: true });
  const server = new OPCUAServer({
    port,
    hostname: "127.0.0.1",
    resourcePath: "/ua/plant",
    serverCertificateManager: certificateManager,
    buildInfo: { productName: "controltower-interop-plant" },
    allowAnonymous: true,
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const namespace = addressSpace.getOwnNamespace();
  const line = namespace.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Line1" });
  const temperature = namespace.addAnalogDataItem({
    componentOf: line, nodeId: "s=Line1.Temperature", browseName: "Temperature", dataType: "Double",
    engineeringUnitsRange: { low: 0, high: 100 }, engineeringUnits: standardUnits.degree_celsius,
  });
  const pressure = namespace.addAnalogDataItem({
    componentOf: line, nodeId: "s=Line1.Pressure", browseName: "Pressure", dataType: "Double",
    engineeringUnitsRange: { low: 0, high: 10 }, engineeringUnits: standardUnits.bar,
  });
  const speed = namespace.addVariable({
    componentOf: line, nodeId: "s=Line1.Speed", browseName: "Speed", dataType: "Double",
  });
  let n = 0;
  const tick = () => {
    const now = new Date();
    temperature.setValueFromSource(new Variant({ dataType: DataType.Double, value: 37 + 0.001 * n }), StatusCodes.Good, now);
    pressure.setValueFromSource(new Variant({ dataType: DataType.Double, value: 1.5 + 0.0001 * n }), StatusCodes.Good, now);
    speed.setValueFromSource(new Variant({ dataType: DataType.Double, value: n }), StatusCodes.Good, now);
    n += 1;
  };
  tick();
  setInterval(tick, 200);
  await server.start();
  process.stdout.write("CERT " + server.certificateFile + "\n");
  process.stdout.write("READY " + server.getEndpointUrl() + "\n");
  const stop = async () => { await server.shutdown(100); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { process.stderr.write(String(err && err.stack || err) + "\n"); process.exit(1); });
