// node-opcua client: read one variable, its EngineeringUnits and EURange from a server, after
// writing it a Double first when WRITE_VALUE is given.
// Usage: node opcua_read.js URL NODE_ID [WRITE_VALUE]. Prints key=value lines: write (the write's
// status, when asked), status, value, unit, range, access (the AccessLevel bits).
"use strict";
const { OPCUAClient, AttributeIds, MessageSecurityMode, SecurityPolicy, BrowseDirection, DataType } = require("node-opcua");

async function main() {
  const [url, nodeId, writeValue] = process.argv.slice(2);
  const client = OPCUAClient.create({
    endpointMustExist: false, securityMode: MessageSecurityMode.None, securityPolicy: SecurityPolicy.None,
    connectionStrategy: { maxRetry: 2, initialDelay: 200, maxDelay: 1000 },
  });
  await client.connect(url);
  const session = await client.createSession();
  if (writeValue !== undefined) {
    const status = await session.write({
      nodeId, attributeId: AttributeIds.Value,
      value: { value: { dataType: DataType.Double, value: Number(writeValue) } },
    });
    process.stdout.write(`write=${status.name}\n`);
  }
  const access = await session.read({ nodeId, attributeId: AttributeIds.AccessLevel });
  process.stdout.write(`access=${access.value.value}\n`);
  const dataValue = await session.read({ nodeId, attributeId: AttributeIds.Value });
  const browse = await session.browse({ nodeId, browseDirection: BrowseDirection.Forward, resultMask: 63 });
  const property = (name) => browse.references.find((r) => r.browseName.name === name);
  const units = property("EngineeringUnits");
  const range = property("EURange");
  const unitValue = units ? (await session.read({ nodeId: units.nodeId, attributeId: AttributeIds.Value })).value.value : null;
  const rangeValue = range ? (await session.read({ nodeId: range.nodeId, attributeId: AttributeIds.Value })).value.value : null;
  process.stdout.write(`status=${dataValue.statusCode.name}\n`);
  process.stdout.write(`value=${dataValue.value.value}\n`);
  process.stdout.write(`unit=${unitValue ? unitValue.displayName.text : ""}\n`);
  process.stdout.write(`range=${rangeValue ? rangeValue.low + "," + rangeValue.high : ""}\n`);
  await session.close();
  await client.disconnect();
}

main().catch((err) => { process.stderr.write(String(err && err.stack || err) + "\n"); process.exit(1); });
