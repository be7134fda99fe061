// An MCP agent built only from the official TypeScript SDK, driven line by line by
// internal/e2e/tsclient_test.go. It connects to MCP_URL with MCP_TOKEN as a bearer token and
// prints {"event":"ready","protocolVersion":...}; then each stdin line is one JSON command,
// run concurrently with the others, answered by one stdout line with the same id:
//
//	{"id":"1","op":"list"}                                   -> {"id":"1","tools":[...]}
//	{"id":"2","op":"call","name":"t","args":{},"progress":true} -> {"id":"2","result":{...}}
//	{"id":"3","op":"abort","target":"2"}                     -> {"id":"3"} (and "2" answers an error)
//
// A failure is {"id":...,"error":"..."}. Every notifications/tools/list_changed prints
// {"event":"list_changed"}. The SDK's Client and StreamableHTTPClientTransport do all the
// protocol work; this script only relays.
import readline from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const text = (r) => (r.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("");

const client = new Client({ name: "castellan-e2e-agent", version: "1.0.0" });
client.setNotificationHandler(ToolListChangedNotificationSchema, () => emit({ event: "list_changed" }));
const transport = new StreamableHTTPClientTransport(new URL(process.env.MCP_URL), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.MCP_TOKEN}` } },
});
await client.connect(transport);
emit({ event: "ready", protocolVersion: transport.protocolVersion, server: client.getServerVersion() });

const aborts = new Map();

async function run(cmd) {
  switch (cmd.op) {
    case "list": {
      const r = await client.listTools();
      return { tools: r.tools };
    }
    case "call": {
      const ac = new AbortController();
      aborts.set(cmd.id, ac);
      const progress = [];
      const opts = { signal: ac.signal, timeout: 120000 };
      if (cmd.progress) opts.onprogress = (p) => progress.push(p.message ?? "");
      try {
        const r = await client.callTool({ name: cmd.name, arguments: cmd.args ?? {} }, undefined, opts);
        return { result: { isError: r.isError ?? false, structuredContent: r.structuredContent ?? null, text: text(r), progress } };
      } finally {
        aborts.delete(cmd.id);
      }
    }
    case "abort": {
      const ac = aborts.get(cmd.target);
      if (!ac) throw new Error(`no call ${cmd.target} in flight`);
      ac.abort("cancelled by the test");
      return {};
    }
    case "close":
      await client.close();
      return {};
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit({ event: "bad_command", error: String(e) });
    return;
  }
  run(cmd).then(
    (r) => emit({ id: cmd.id, ...r }),
    (e) => emit({ id: cmd.id, error: String(e?.message ?? e) }),
  );
});
rl.on("close", async () => {
  await client.close().catch(() => {});
  process.exit(0);
});
