// An MCP client from the official TypeScript SDK, driven by the gateway's end-to-end tests.
// Usage: node client.mjs <url> <key or ""> <scenario> [count]
// TRANSPORT=sse uses the legacy HTTP+SSE transport (2024-11-05) instead of streamable HTTP.
// Prints one JSON object describing what happened.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key, scenario, count = "1"] = process.argv.slice(2);
const headers = key ? { Authorization: `Bearer ${key}` } : {};
const Transport = process.env.TRANSPORT === "sse" ? SSEClientTransport : StreamableHTTPClientTransport;
// SESSION_ID: resume that session instead of starting one (the SDK then skips initialize).
const options = { requestInit: { headers }, sessionId: process.env.SESSION_ID || undefined };
// ALTERNATE_URL: every other request goes to that host instead (another node of a fleet); the
// hosts each request went to are reported.
const hostsUsed = [];
if (process.env.ALTERNATE_URL) {
  const hosts = [new URL(url).host, new URL(process.env.ALTERNATE_URL).host];
  options.fetch = (input, init) => {
    const target = new URL(input instanceof Request ? input.url : String(input));
    target.host = hosts[hostsUsed.length % 2];
    hostsUsed.push(`${init?.method ?? "GET"} ${target.host}`);
    return fetch(target, init);
  };
}
let transport = new Transport(new URL(url), options);
let client = new Client({ name: "gateway-e2e", version: "1.0.0" });
const text = (result) => result.content?.[0]?.text;
const out = {};

try {
  await client.connect(transport);
  out.sessionId = transport.sessionId;
  if (scenario === "call") {
    out.tools = (await client.listTools()).tools.map((tool) => tool.name);
    out.echo = text(await client.callTool({ name: "echo", arguments: { message: process.env.SECRET_ARG } }));
    out.sum = text(await client.callTool({ name: "get-sum", arguments: { a: 2, b: 3 } }));
  } else if (scenario === "resume") {
    // What the MCP transport asks of a client whose session is unknown: on 404, start anew.
    try {
      await client.callTool({ name: "echo", arguments: { message: "with the old session" } });
      out.resumed = true;
    } catch (error) {
      out.firstCode = error?.code ?? null;
      transport = new Transport(new URL(url), { requestInit: { headers } });
      client = new Client({ name: "gateway-e2e", version: "1.0.0" });
      await client.connect(transport);
      out.sessionId = transport.sessionId;
      out.echo = text(await client.callTool({ name: "echo", arguments: { message: "anew" } }));
    }
  } else if (scenario === "grants") {
    // Everything the caller is shown, page by page, then the calls named in CALLS (tools),
    // PROMPTS and READS (resource URIs), each with its outcome.
    out.tools = [];
    out.toolPages = 0;
    let cursor;
    do {
      const page = await client.listTools(cursor ? { cursor } : {});
      out.tools.push(...page.tools.map((tool) => tool.name));
      out.toolPages++;
      cursor = page.nextCursor;
    } while (cursor);
    out.prompts = (await client.listPrompts()).prompts.map((prompt) => prompt.name);
    out.resources = (await client.listResources()).resources.map((resource) => resource.uri);
    out.templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate);
    const attempt = async (what) => {
      try {
        await what();
        return "ok";
      } catch (error) {
        return String(error?.message ?? error);
      }
    };
    const list = (name) => (process.env[name] || "").split(",").filter(Boolean);
    out.calls = {};
    for (const name of list("CALLS")) out.calls[name] = await attempt(() => client.callTool({ name, arguments: {} }));
    out.gets = {};
    for (const name of list("PROMPTS")) out.gets[name] = await attempt(() => client.getPrompt({ name }));
    out.reads = {};
    for (const uri of list("READS")) out.reads[uri] = await attempt(() => client.readResource({ uri }));
  } else if (scenario === "burst") {
    out.ok = 0;
    out.errors = [];
    for (let i = 0; i < Number(count); i++) {
      try {
        await client.callTool({ name: "echo", arguments: { message: `call ${i}` } });
        out.ok++;
      } catch (error) {
        out.errors.push(String(error?.message ?? error));
      }
    }
  }
  // Streamable HTTP only; a legacy session ends with its stream.
  await transport.terminateSession?.();
  await client.close();
} catch (error) {
  out.error = String(error?.message ?? error);
  out.code = error?.code ?? null;
}
if (hostsUsed.length) out.hosts = hostsUsed;
console.log(JSON.stringify(out));
process.exit(0);
