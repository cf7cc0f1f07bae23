// The TypeScript client against a real daemon: tasks, work(), locks, identities, admin
// messages, and errors mapped to their types (a 400 names the field).

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  BadRequestError,
  ConflictError,
  LockBusyError,
  LockLostError,
  NotFoundError,
  UnauthorizedError,
  completed,
  failed,
  type WorkTask,
} from "../src/index.js";
import { client, poll, skip, unique } from "./support.js";

test("add, get, claim, extend and complete a task", { skip }, async () => {
  const c = client();
  const id = await c.addTask("login", { username: "user@example.com" }, { priority: 10 });
  const record = await c.getTask(id);
  assert.equal(record.type, "login");
  assert.equal(record.status, "pending");
  assert.deepEqual(record.data, { username: "user@example.com" });
  const [task] = await c.claim(["login"], { waitMs: 1000 });
  assert.ok(task, "the task was not handed out");
  assert.equal(task.id, id);
  assert.equal(task.attempt, 1);
  assert.equal((await c.getTask(id)).status, "processing");
  const deadline = await c.extend(task, 5000);
  assert.ok(deadline >= Date.now() + 3000, `deadline ${deadline} too close`);
  await assert.rejects(c.complete({ ...task, lease: task.lease + "x" }), ConflictError);
  await c.complete(task, { ok: true });
  assert.equal((await c.getTask(id)).status, "completed");
  await assert.rejects(c.complete(task), ConflictError);
});

test("a claim carries reports, and report() sends them alone", { skip }, async () => {
  const c = client();
  const first = await c.addTask("login", { n: 1 }, { priority: 100 });
  const second = await c.addTask("login", { n: 2 }, { priority: 100, maxAttempts: 1 });
  const tasks = await c.claim("login", { max: 2, waitMs: 1000 });
  assert.deepEqual(tasks.map((t) => t.id).sort(), [first, second].sort());
  assert.deepEqual(tasks.reported, []);
  const [a, b] = tasks[0].id === first ? [tasks[0], tasks[1]] : [tasks[1], tasks[0]];
  const third = await c.addTask("login", { n: 3 }, { priority: 100 });
  const claimed = await c.claim("login", {
    waitMs: 1000,
    report: [completed(a, { ok: true }), failed(b, "boom"), { id: first, lease: a.lease }, { id: "no-such-task", lease: "0".repeat(32) }],
  });
  assert.deepEqual(claimed.map((t) => t.id), [third]);
  assert.deepEqual(claimed.reported[0], { id: first, status: "completed" });
  assert.deepEqual(claimed.reported[1], { id: second, status: "failed", retry_at_ms: null });
  assert.equal(claimed.reported[2].error?.status, 409);
  assert.equal(claimed.reported[3].error?.status, 404);
  assert.equal((await c.getTask(first)).status, "completed");
  const outcomes = await c.report([{ id: third, lease: "" }, completed(claimed[0])]);
  assert.equal(outcomes[0].error?.status, 400);
  assert.equal(outcomes[0].error?.field, "report[0].lease");
  assert.deepEqual(outcomes[1], { id: third, status: "completed" });
  await assert.rejects(
    c.report(Array(1001).fill({ id: "x", lease: "l" })),
    (e: unknown) => e instanceof BadRequestError && e.field === "report",
  );
  assert.equal(await c.deleteDead(second), true);
});

test("work() runs each task once and fails a throwing handler with its message", { skip }, async () => {
  const c = client();
  const batch = unique("batch");
  const ids = await Promise.all(Array.from({ length: 50 }, (_, n) => c.addTask("job_check", { batch, n })));
  const failing = await c.addTask("job_check", { batch, n: -1 }, { maxAttempts: 1 });
  const seen: number[] = [];
  const stop = new AbortController();
  const stats = await c.work(
    "job_check",
    async (task: WorkTask) => {
      const n = (task.data as { n: number }).n;
      seen.push(n);
      if (seen.length >= 51) stop.abort();
      if (n < 0) throw new Error("no such job");
      return { checked: n };
    },
    { concurrency: 4, signal: stop.signal, waitMs: 200 },
  );
  assert.deepEqual([...seen].sort((a, b) => a - b), [-1, ...Array.from({ length: 50 }, (_, n) => n)]);
  assert.deepEqual(stats, { completed: 50, failed: 1, lost: 0 });
  for (const id of ids.slice(0, 5)) assert.equal((await c.getTask(id)).status, "completed");
  const dead = await c.getTask(failing);
  assert.equal(dead.status, "failed");
  assert.match(dead.last_error ?? "", /Error: no such job/);
  assert.ok((await c.deadLetters()).tasks.some((t) => t.id === failing));
  assert.equal(await c.deleteDead(failing), true);
  await assert.rejects(c.deleteDead(failing), NotFoundError);
});

test("withLock excludes concurrent holders and hands out increasing fences", { skip }, async () => {
  const c = client();
  const name = unique("bet-lock:user123");
  let inside = 0;
  let most = 0;
  const fences: number[] = [];
  await Promise.all(
    Array.from({ length: 5 }, () =>
      c.withLock(
        name,
        2000,
        async (fence) => {
          inside++;
          most = Math.max(most, inside);
          fences.push(fence);
          await new Promise((r) => setTimeout(r, 20));
          inside--;
        },
        { waitMs: 10_000 },
      ),
    ),
  );
  assert.equal(most, 1, "two holders at once");
  assert.deepEqual(fences, [...fences].sort((a, b) => a - b));
  assert.equal(new Set(fences).size, 5);

  const lease = await c.acquireLock(name, 5000);
  await assert.rejects(c.acquireLock(name, 1000, 100), LockBusyError);
  await assert.rejects(c.withLock(name, 1000, () => assert.fail("ran without the lock")), LockBusyError);
  const held = (await c.heldLocks()).locks.filter((h) => h.name === name);
  assert.deepEqual(held.map((h) => [h.holder, h.fence]), [["lease", lease.fence]]);
  assert.equal(await c.releaseLock(lease), true);
  assert.deepEqual((await c.heldLocks()).locks.filter((h) => h.name === name), []);
  assert.equal(await c.releaseLock(lease), false);
  await assert.rejects(c.extendLock(lease, 1000), LockLostError);
});

test("withLock holds a lock past its TTL by extending it", { skip }, async () => {
  const c = client();
  const name = unique("wallet-retry-scheduler-lock");
  await c.withLock(name, 600, async (_fence, held) => {
    const until = Date.now() + 1800;
    while (Date.now() < until) {
      await assert.rejects(c.acquireLock(name, 600), LockBusyError);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(held.lost.aborted, false);
  });
});

test("identities round trip", { skip }, async () => {
  const c = client();
  const room = `https://rooms.example/${unique("room")}`;
  await c.putIdentity(room, "user1", { name: "John" });
  await c.putIdentity(room, "user2", { name: "Mai", lang: "vi" });
  assert.deepEqual(await c.getIdentity(room, "user1"), { name: "John" });
  assert.deepEqual(await c.roomIdentities(room), { user1: { name: "John" }, user2: { name: "Mai", lang: "vi" } });
  assert.equal(await c.deleteIdentity(room, "user1"), true);
  assert.equal(await c.deleteIdentity(room, "user1"), false);
  await assert.rejects(c.getIdentity(room, "user1"), NotFoundError);
});

test("admin messages arrive in order and are acknowledged", { skip }, async () => {
  const c = client();
  const pid = 24000 + Math.floor(Math.random() * 1000);
  for (let i = 0; i < 3; i++) await c.adminSend(pid, `hello ${i}`);
  const got: string[] = [];
  const stop = new AbortController();
  for await (const m of c.adminInbox(pid, { waitMs: 200, signal: stop.signal })) {
    got.push(m.message);
    if (got.length === 3) {
      await c.adminAck(pid, [m.id]);
      break;
    }
  }
  assert.deepEqual(got, ["hello 0", "hello 1", "hello 2"]);
  assert.deepEqual(await c.adminReceive(pid), []);
});

test("errors carry their status and the field to blame", { skip }, async () => {
  const c = client();
  const bad = await c.addTask("no_such_type", {}).then(
    () => assert.fail("an unknown type was accepted"),
    (e: unknown) => e,
  );
  assert.ok(bad instanceof BadRequestError);
  assert.equal(bad.status, 400);
  assert.equal(bad.field, "type");
  await assert.rejects(c.claim([], {}), (e: unknown) => e instanceof BadRequestError && e.field === "types");
  await assert.rejects(c.addTask("login", {}, { maxAttempts: 0 }), (e: unknown) => e instanceof BadRequestError && e.field === "max_attempts");
  await assert.rejects(c.putIdentity("", "p", {}), (e: unknown) => e instanceof BadRequestError && e.field === "room");
  await assert.rejects(c.getTask(unique("nope")), (e: unknown) => e instanceof NotFoundError && e.status === 404);
  await assert.rejects(client(null).addTask("login", {}), (e: unknown) => e instanceof UnauthorizedError && e.status === 401);
  await poll("the daemon to stay healthy", async () => (await c.health()).status === "ok");
});
