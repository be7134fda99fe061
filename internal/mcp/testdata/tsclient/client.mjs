// An agent-style MCP client built only from the official TypeScript SDK. It connects to
// MCP_URL with MCP_TOKEN as a bearer token, lists the tools, calls echo (the Go test approves
// the job meanwhile), makes an invalid call and a call to a tool of another pool, and prints
// one JSON object with what it saw.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = new URL(process.env.MCP_URL);
const token = process.env.MCP_TOKEN;

const client = new Client({ name: "castellan-ts-test", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(url, {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
await client.connect(transport);

const out = { protocolVersion: transport.protocolVersion, server: client.getServerVersion() };
const listed = await client.listTools();
out.tools = listed.tools.map((t) => ({ name: t.name, title: t.title ?? "", annotations: t.annotations ?? null, inputSchema: t.inputSchema, outputSchema: t.outputSchema ?? null }));

const progress = [];
const ok = await client.callTool(
  { name: "echo", arguments: { n: 42 } },
  undefined,
  { onprogress: (p) => progress.push(p.message ?? ""), timeout: 60000 },
);
out.call = { isError: ok.isError ?? false, structuredContent: ok.structuredContent ?? null, text: ok.content.map((c) => c.text).join("") };
out.progress = progress;

const bad = await client.callTool({ name: "echo", arguments: { n: "x" } });
out.bad = { isError: bad.isError ?? false, text: bad.content.map((c) => c.text).join("") };

try {
  const other = await client.callTool({ name: "beta-only", arguments: {} });
  out.other = { isError: other.isError ?? false, text: other.content.map((c) => c.text).join("") };
} catch (e) {
  out.other = { isError: true, text: String(e.message) };
}

await client.close();
process.stdout.write(JSON.stringify(out) + "\n");
