// An MCP server from the official TypeScript SDK for the authorization tests: twelve tools with
// annotations, listed five per page; prompts, resources and resource templates; and a record of
// every call, prompt and read it receives.
// Usage: PORT=... RECORD=file [HEADERS=file] [JSON_RESPONSE=1] node grants_server.mjs
// JSON_RESPONSE=1 answers with JSON; otherwise every answer is an SSE stream whose list answers
// carry a log notification before the result.
import { createServer } from "node:http";
import { appendFileSync } from "node:fs";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

const PAGE = 5;
const readOnly = { readOnlyHint: true };
const TOOLS = [
  ["tickets_search", readOnly],
  ["tickets_get", readOnly],
  ["tickets_create", { destructiveHint: false }],
  ["tickets_update", undefined],
  ["tickets_delete", { destructiveHint: true }],
  ["run_tests", { destructiveHint: false, idempotentHint: true }],
  ["deploy", { destructiveHint: true }],
  ["read_secrets", readOnly],
  ["echo", readOnly],
  ["kb_search", readOnly],
  ["kb_write", { destructiveHint: false }],
  ["admin_reset", { destructiveHint: true }],
].map(([name, annotations]) => ({
  name,
  description: `the ${name} tool`,
  inputSchema: { type: "object", properties: {} },
  ...(annotations ? { annotations } : {}),
}));
const PROMPTS = ["triage_ticket", "summarize", "admin_prompt"].map((name) => ({ name }));
const RESOURCES = ["file:///shared/handbook.md", "file:///shared/faq.md", "file:///private/salaries.csv"]
  .map((uri) => ({ uri, name: uri.split("/").pop() }));
const TEMPLATES = ["file:///shared/{path}", "file:///private/{path}"]
  .map((uriTemplate) => ({ uriTemplate, name: uriTemplate }));

const record = (entry) => appendFileSync(process.env.RECORD, JSON.stringify(entry) + "\n");
const page = (items, cursor) => {
  const start = cursor ? Number(cursor.replace("page-", "")) * PAGE : 0;
  const next = start + PAGE < items.length ? `page-${start / PAGE + 1}` : undefined;
  return { items: items.slice(start, start + PAGE), nextCursor: next };
};

function mcpServer() {
  const server = new Server(
    { name: "grants-test-server", version: "1.0.0" },
    { capabilities: { tools: {}, prompts: {}, resources: {}, logging: {} } },
  );
  server.setRequestHandler(ListToolsRequestSchema, async (request, extra) => {
    await extra.sendNotification({
      method: "notifications/message",
      params: { level: "info", data: "listing tools" },
    });
    const { items, nextCursor } = page(TOOLS, request.params?.cursor);
    return { tools: items, nextCursor };
  });
  server.setRequestHandler(CallToolRequestSchema, async (request) => {
    record({ method: "tools/call", name: request.params.name });
    return { content: [{ type: "text", text: `called ${request.params.name}` }] };
  });
  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    record({ method: "prompts/get", name: request.params.name });
    return { messages: [{ role: "user", content: { type: "text", text: request.params.name } }] };
  });
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: TEMPLATES }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
    record({ method: "resources/read", uri: request.params.uri });
    return { contents: [{ uri: request.params.uri, text: "contents" }] };
  });
  return server;
}

// Stateless: one server and transport per request. With HEADERS=file, every request's headers
// are recorded there (what the gateway lets through to the server).
const http = createServer(async (req, res) => {
  if (process.env.HEADERS) appendFileSync(process.env.HEADERS, JSON.stringify(req.headers) + "\n");
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: process.env.JSON_RESPONSE === "1",
  });
  res.on("close", () => transport.close());
  await mcpServer().connect(transport);
  await transport.handleRequest(req, res);
});
http.listen(Number(process.env.PORT), "127.0.0.1");
