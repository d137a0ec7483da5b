// An MCP server from the official TypeScript SDK v2 (`@modelcontextprotocol/server`), serving both
// eras on one endpoint (2026-07-28 per request, 2025 handshake-era requests statelessly), for the
// protocol tests. Its tools show what the gateway must keep:
// - `echo` answers its text; `region` reads an argument a header mirrors (x-mcp-header);
// - `slow` runs until its request is cancelled and reports when (CANCELLED lines on stdout);
// - `confirm` asks for input (multi round-trip) before it answers;
// - `touch` announces that the tool list changed, on every open subscriptions/listen stream.
// Usage: PORT=... node modern_server.mjs   (prints LISTENING when it serves)
import { createServer } from "node:http";
import { McpServer, acceptedContent, createMcpHandler, inputRequired } from "@modelcontextprotocol/server";
import { toNodeHandler } from "@modelcontextprotocol/node";
import * as z from "zod";

const log = (line) => process.stdout.write(line + "\n");

function mcpServer() {
  const server = new McpServer({ name: "modern-test-server", version: "1.0.0" }, {
    capabilities: { tools: { listChanged: true } },
  });
  server.registerTool("echo", {
    description: "answers its text",
    inputSchema: z.object({ text: z.string() }),
  }, async ({ text }) => ({ content: [{ type: "text", text }] }));
  server.registerTool("region", {
    description: "answers the region it was given",
    inputSchema: z.object({ region: z.string().meta({ "x-mcp-header": "Region" }) }),
  }, async ({ region }) => ({ content: [{ type: "text", text: `region ${region}` }] }));
  server.registerTool("slow", {
    description: "runs until cancelled (at most 20 s)",
    inputSchema: z.object({ tag: z.string() }),
  }, async ({ tag }, ctx) => {
    const signal = ctx.mcpReq.signal;
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 20000);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        log(`CANCELLED ${tag} ${Date.now()}`);
        resolve();
      });
    });
    return { content: [{ type: "text", text: `slow ${tag} done` }] };
  });
  const confirmation = z.object({ confirm: z.boolean() });
  server.registerTool("confirm", {
    description: "asks for a confirmation, then answers",
    inputSchema: z.object({ what: z.string() }),
  }, async ({ what }, ctx) => {
    const answer = acceptedContent(ctx.mcpReq.inputResponses, "confirm", confirmation);
    if (answer?.confirm !== true) {
      return inputRequired({
        inputRequests: {
          confirm: inputRequired.elicit({ message: `Really ${what}?`, requestedSchema: confirmation }),
        },
      });
    }
    return { content: [{ type: "text", text: `confirmed ${what}` }] };
  });
  server.registerTool("touch", {
    description: "announces a changed tool list",
    inputSchema: z.object({}),
  }, async () => {
    handler.notify.toolsChanged();
    return { content: [{ type: "text", text: "touched" }] };
  });
  return server;
}

const handler = createMcpHandler(() => mcpServer(), { keepAliveMs: 0 });
const http = createServer(toNodeHandler(handler));
http.listen(Number(process.env.PORT), "127.0.0.1", () => log("LISTENING"));
