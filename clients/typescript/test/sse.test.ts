// The client's own parsing, without a daemon: server-sent events and error answers.

import { test } from "node:test";
import assert from "node:assert/strict";

import { BadRequestError, BotfleetError, ConflictError, SseParser, UnavailableError, errorFor } from "../src/index.js";

test("events split across chunks and line endings are parsed whole", () => {
  const parser = new SseParser();
  const events = [
    ...parser.push(": keep-alive\n\nevent: snap"),
    ...parser.push('shot\r\ndata: {"timestamp": 1}\r'),
    ...parser.push("\n\r\nevent: peer\ndata: not json\ndata: two lines\n"),
    ...parser.push("\n"),
  ];
  assert.deepEqual(events, [
    { event: "snapshot", data: { timestamp: 1 }, id: null },
    { event: "peer", data: "not json\ntwo lines", id: null },
  ]);
});

test("an event without a name is a message, and a blank line alone is nothing", () => {
  const parser = new SseParser();
  assert.deepEqual(parser.push("\n\ndata: 5\nid: 7\n\n"), [{ event: "message", data: 5, id: "7" }]);
});

test("error answers map to their types with status and field", () => {
  const bad = errorFor(400, { error: "type: unknown task type", field: "type" }, "fallback");
  assert.ok(bad instanceof BadRequestError);
  assert.ok(bad instanceof BotfleetError);
  assert.equal(bad.status, 400);
  assert.equal(bad.field, "type");
  assert.equal(bad.message, "type: unknown task type");
  assert.ok(errorFor(409, null, "stale") instanceof ConflictError);
  assert.ok(errorFor(503, { error: "outbox full", field: null }, "x") instanceof UnavailableError);
  const other = errorFor(500, "not an object", "POST /x answered 500");
  assert.equal(other.constructor, BotfleetError);
  assert.equal(other.message, "POST /x answered 500");
});
