// Start Miniflare with the peer's worker (worker.mjs) for edgepop's bench.
//
//   node serve.mjs --data-dir DIR --key KEY --value-hex HEX --object NAME [--host H] [--port P]
//
// Port 0 (the default) lets the system pick a free port. KV and Durable Object storage
// persist under DIR, as `wrangler dev` keeps them on disk by default. Once the worker
// serves and the KV key holds the value, DIR/ready.json names the address (written
// whole, then renamed: a reader never sees half of it). SIGTERM or SIGINT disposes of
// Miniflare, which stops its workerd process, and exits.

import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { Log, LogLevel, Miniflare } from "miniflare";

// Any date up to the bundled workerd's own; DO RPC (stub.increment()) needs 2024-04-03+.
const COMPATIBILITY_DATE = "2026-04-01";

const { values: args } = parseArgs({
  options: {
    "data-dir": { type: "string" },
    key: { type: "string" },
    "value-hex": { type: "string" },
    object: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
  },
});
for (const name of ["data-dir", "key", "value-hex", "object"]) {
  if (!args[name]) {
    console.error(`serve.mjs: --${name} is required`);
    process.exit(2);
  }
}
const dataDir = args["data-dir"];

const miniflare = new Miniflare({
  host: args.host,
  port: Number(args.port),
  modules: true,
  scriptPath: fileURLToPath(new URL("./worker.mjs", import.meta.url)),
  compatibilityDate: COMPATIBILITY_DATE,
  kvNamespaces: ["DATA"],
  durableObjects: { COUNTER: "Counter" },
  bindings: { KEY: args.key, OBJECT: args.object },
  kvPersist: join(dataDir, "kv"),
  durableObjectsPersist: join(dataDir, "do"),
  // A log line per request would cost the peer CPU that edgepop's ingress does not pay.
  logRequests: false,
  log: new Log(LogLevel.WARN),
  // No fetch of the real `request.cf` object from Cloudflare: the placeholder will do.
  cf: false,
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await miniflare.dispose();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

const url = await miniflare.ready;
const data = await miniflare.getKVNamespace("DATA");
// A fresh ArrayBuffer: Miniflare's proxy refuses a view into Node's shared Buffer pool.
await data.put(args.key, Uint8Array.from(Buffer.from(args["value-hex"], "hex")).buffer);

const ready = join(dataDir, "ready.json");
await writeFile(`${ready}.tmp`, JSON.stringify({ url: url.href, pid: process.pid }));
await rename(`${ready}.tmp`, ready);
