// An MCP server from the official TypeScript SDK (v1 line) whose tool `delay` runs as a task
// (2025-11-25 tasks: `params.task` on the call, then tasks/get, tasks/result, tasks/list,
// tasks/cancel). Stateless, with one task store for every request: the server itself binds tasks
// to nobody, as a server behind a gateway that sees one principal.
// Usage: PORT=... [JSON_RESPONSE=1] node tasks_server.mjs
import { createServer } from "node:http";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { InMemoryTaskStore } from "@modelcontextprotocol/sdk/experimental/tasks/stores/in-memory.js";
import { z } from "zod";

const taskStore = new InMemoryTaskStore();

function mcpServer() {
  const server = new McpServer(
    { name: "tasks-test-server", version: "1.0.0" },
    { capabilities: { tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } } }, taskStore },
  );
  server.experimental.tasks.registerToolTask(
    "delay",
    { description: "completes after ms milliseconds", inputSchema: { ms: z.number() } },
    {
      async createTask({ ms }, { taskStore, taskRequestedTtl }) {
        const task = await taskStore.createTask({ ttl: taskRequestedTtl });
        setTimeout(() => {
          taskStore
            .storeTaskResult(task.taskId, "completed", { content: [{ type: "text", text: `waited ${ms}` }] })
            .catch(() => {});
        }, ms);
        return { task };
      },
      async getTask(_args, { taskId, taskStore }) {
        return await taskStore.getTask(taskId);
      },
      async getTaskResult(_args, { taskId, taskStore }) {
        return await taskStore.getTaskResult(taskId);
      },
    },
  );
  return server;
}

const http = createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined;
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: process.env.JSON_RESPONSE === "1",
  });
  const server = mcpServer();
  res.on("close", () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, body);
});
http.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("READY"));
