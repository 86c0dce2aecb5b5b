// The Miniflare peer's worker: the same two jobs as edgepop's bench workers
// (bench/workers/kv-read and bench/workers/counter), written for workerd.
//
//   GET /kv       one KV read of env.KEY from the DATA namespace, answered as bytes
//   GET /counter  increment(1) on the Counter object named env.OBJECT, answered as text
//
// Counter does what edgepop's built-in Counter does (pop_node/objects/builtin.py): read
// "value" from the object's storage, add, write it back, return it. workerd's output
// gate holds the reply until the write is stored, as edgepop's does.

import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  async increment(by = 1) {
    const value = ((await this.ctx.storage.get("value")) ?? 0) + by;
    await this.ctx.storage.put("value", value);
    return value;
  }
}

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === "/kv") {
      const value = await env.DATA.get(env.KEY, "arrayBuffer");
      if (value === null) {
        return new Response("missing", { status: 404 });
      }
      return new Response(value);
    }
    if (pathname === "/counter") {
      const counter = env.COUNTER.get(env.COUNTER.idFromName(env.OBJECT));
      return new Response(String(await counter.increment(1)));
    }
    return new Response("no such route", { status: 404 });
  },
};
