// The official TypeScript SDK v2 client (`@modelcontextprotocol/client`) through the gateway, for
// the protocol tests. Usage: node client_v2.mjs URL KEY MODE, MODE "legacy" (the SDK's default: the
// initialize handshake, no probe) or "auto" (probes server/discover first). Lists the tools and
// calls `echo`; prints one JSON report line (a failure is reported, not thrown).
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const [url, key, mode] = process.argv.slice(2);
const report = { mode };
try {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  const client = new Client(
    { name: "gateway-test-client-v2", version: "1.0.0" },
    { versionNegotiation: { mode } },
  );
  await client.connect(transport);
  report.protocol_version = client.getNegotiatedProtocolVersion();
  report.tools = (await client.listTools()).tools.map((tool) => tool.name);
  const echoed = await client.callTool({ name: "echo", arguments: { text: "hello" } });
  report.echo = echoed.content[0].text;
  await client.close();
} catch (err) {
  report.error = `${err.name}: ${err.message}`;
}
console.log(JSON.stringify(report));
