/** The {@link BotfleetClient} of a `botfleet run` daemon's HTTP API. */

import {
  BotfleetError,
  ConflictError,
  LockBusyError,
  LockLostError,
  NotFoundError,
  TransportError,
  UnavailableError,
  errorFor,
} from "./errors.js";
import { ServerSentEvent, SseParser } from "./sse.js";
import type {
  ClaimedTasks,
  ReportEntry,
  Reported,
  AddTaskOptions,
  AdminMessage,
  ClaimOptions,
  ClaimedTask,
  ClientOptions,
  FailAnswer,
  FairnessRecord,
  GameSession,
  HeartbeatOptions,
  HeldLock,
  LockHeldNow,
  Lease,
  Peer,
  PlayerRound,
  SettledSeed,
  SharedDataReading,
  Task,
  TaskList,
  WorkOptions,
  WorkStats,
  WorkTask,
} from "./types.js";

const USER_AGENT = "botfleet-client-typescript/0.1.0";
/** Shortest lease the keeper of a task plans for. */
const MIN_LEASE_MS = 300;

type Query = Record<string, string | number | boolean | undefined | null>;

interface RequestOptions {
  body?: unknown;
  query?: Query;
  /** How long the daemon may hold the request (a long poll): added to the timeout. */
  waitMs?: number;
  signal?: AbortSignal;
}

/** Whether `e` is an outage worth retrying (503, or no answer). */
export function isTransient(e: unknown): boolean {
  return e instanceof UnavailableError || e instanceof TransportError;
}

/** Resolves after `ms`, or at once when `signal` is aborted. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

function segment(value: string | number): string {
  return encodeURIComponent(String(value));
}

/**
 * A client of one `botfleet run` daemon.
 *
 * Every method rejects with a {@link BotfleetError} subclass on an error answer (400
 * {@link BadRequestError} with `.field`, 401, 404, 409, 503) and with a
 * {@link TransportError} when no answer came.
 *
 * ```ts
 * const client = new BotfleetClient("http://127.0.0.1:8080", { token: process.env.BOTFLEET_TOKEN });
 * const id = await client.addTask("login", { username: "user@example.com" }, { priority: 10 });
 * ```
 */
export class BotfleetClient {
  /** The daemon's base URL. */
  readonly url: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;

  constructor(url: string, options: ClientOptions = {}) {
    const parsed = new URL(url);
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new TypeError(`url must be http://HOST[:PORT] or https://..., got ${url}`);
    }
    this.url = url.replace(/\/+$/, "");
    this.token = options.token || undefined;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  private target(route: string, query?: Query): string {
    let target = this.url + route;
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined && value !== null) params.append(key, String(value));
      }
      const text = params.toString();
      if (text) target += "?" + text;
    }
    return target;
  }

  private headers(hasBody: boolean, accept = "application/json"): Record<string, string> {
    const headers: Record<string, string> = { Accept: accept, "User-Agent": USER_AGENT };
    if (hasBody) headers["Content-Type"] = "application/json";
    if (this.token) headers["Authorization"] = `Bearer ${this.token}`;
    return headers;
  }

  /** Sends one request; resolves to the decoded JSON answer or rejects with its error. */
  private async request<T>(method: string, route: string, options: RequestOptions = {}): Promise<T> {
    const limit = this.timeoutMs + (options.waitMs ?? 0);
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, limit);
    const forward = () => controller.abort();
    options.signal?.addEventListener("abort", forward, { once: true });
    if (options.signal?.aborted) controller.abort();
    let status: number;
    let text: string;
    try {
      const response = await fetch(this.target(route, options.query), {
        method,
        headers: this.headers(options.body !== undefined),
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        signal: controller.signal,
      });
      status = response.status;
      text = await response.text();
    } catch (e) {
      if (timedOut) throw new TransportError(`${method} ${route}: no answer within ${limit} ms`);
      if (options.signal?.aborted) throw options.signal.reason ?? e;
      const cause = (e as { cause?: { message?: string } }).cause?.message ?? (e as Error).message;
      throw new TransportError(`${method} ${route}: ${cause}`);
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", forward);
    }
    let decoded: unknown = null;
    if (text) {
      try {
        decoded = JSON.parse(text);
      } catch {
        if (status < 400) throw new BotfleetError(`${method} ${route}: answer is not JSON: ${text.slice(0, 200)}`, status);
      }
    }
    if (status >= 400) throw errorFor(status, decoded, `${method} ${route} answered ${status}`);
    return decoded as T;
  }

  /** The events of `GET route` as a `text/event-stream`, until it ends or `signal` aborts. */
  private async *events(route: string, query: Query | undefined, signal?: AbortSignal): AsyncGenerator<ServerSentEvent> {
    const controller = new AbortController();
    const forward = () => controller.abort();
    signal?.addEventListener("abort", forward, { once: true });
    if (signal?.aborted) controller.abort();
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
    try {
      let response: Response;
      try {
        response = await fetch(this.target(route, query), {
          headers: this.headers(false, "text/event-stream"),
          signal: controller.signal,
        });
      } catch (e) {
        if (signal?.aborted) return;
        throw new TransportError(`GET ${route}: ${(e as { cause?: Error }).cause?.message ?? (e as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
      if (response.status >= 400) {
        const text = await response.text();
        let decoded: unknown = null;
        try {
          decoded = JSON.parse(text);
        } catch {
          // Not JSON.
        }
        throw errorFor(response.status, decoded, `GET ${route} answered ${response.status}`);
      }
      if (!response.body) return;
      reader = response.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          if (signal?.aborted) return;
          throw new TransportError(`GET ${route}: stream broke: ${(e as Error).message}`);
        }
        if (chunk.done) return;
        for (const event of parser.push(decoder.decode(chunk.value, { stream: true }))) yield event;
      }
    } finally {
      signal?.removeEventListener("abort", forward);
      controller.abort();
      reader?.releaseLock();
    }
  }

  /**
   * The data of the events named `name`, opening the stream again after a break when
   * `reconnect`; with `key`, events whose key is not above the last one seen are skipped.
   */
  private async *follow<T>(
    route: string,
    query: Query | undefined,
    name: string,
    options: { signal?: AbortSignal; reconnect?: boolean },
    key?: (data: T) => number | null,
  ): AsyncGenerator<T> {
    let last: number | null = null;
    let delay = 50;
    const signal = options.signal;
    while (!signal?.aborted) {
      try {
        for await (const event of this.events(route, query, signal)) {
          delay = 50;
          if (event.event !== name) continue;
          const data = event.data as T;
          if (key) {
            const k = key(data);
            if (k !== null) {
              if (last !== null && k <= last) continue;
              last = k;
            }
          }
          yield data;
        }
      } catch (e) {
        if (signal?.aborted) return;
        if (!options.reconnect || !isTransient(e)) throw e;
      }
      if (!options.reconnect) return;
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 2000);
    }
  }

  // ------------------------------------------------------------------ health

  /** `GET /health`. */
  health(): Promise<{ status: string; mode?: string; [key: string]: unknown }> {
    return this.request("GET", "/health");
  }

  // ------------------------------------------------------------------ tasks

  /**
   * Queues a task of `type` (one of the daemon's `scheduler.task_types`) with `data` (any
   * JSON, default `{}`); resolves to its id.
   */
  async addTask(type: string, data: unknown = {}, options: AddTaskOptions = {}): Promise<string> {
    const body: Record<string, unknown> = { type, data };
    if (options.priority !== undefined) body.priority = options.priority;
    if (options.delayMs !== undefined) body.delay_ms = options.delayMs;
    if (options.maxAttempts !== undefined) body.max_attempts = options.maxAttempts;
    if (options.id !== undefined) body.id = options.id;
    return (await this.request<{ id: string }>("POST", "/api/tasks", { body })).id;
  }

  /** The task record; {@link NotFoundError} when there is none. */
  getTask(id: string): Promise<Task> {
    return this.request("GET", `/api/tasks/${segment(id)}`);
  }

  /**
   * Claims up to `max` tasks of `types`, waiting up to `waitMs` for one (an empty array when
   * none came). Each must be extended before its `deadline_ms`, then completed or failed.
   * With `report`, the finished tasks listed are applied first: the answer's `reported` holds
   * one outcome per entry, in order (empty without one).
   */
  async claim(types: string | string[], options: ClaimOptions = {}): Promise<ClaimedTasks> {
    const body: Record<string, unknown> = {
      types: typeof types === "string" ? [types] : types,
      max: options.max ?? 1,
      wait_ms: options.waitMs ?? 0,
    };
    if (options.leaseMs !== undefined) body.lease_ms = options.leaseMs;
    if (options.report !== undefined) body.report = options.report;
    const answer = await this.request<{ tasks: ClaimedTask[]; reported?: Reported[] }>("POST", "/api/tasks/claim", {
      body,
      waitMs: options.waitMs ?? 0,
    });
    return Object.assign(answer.tasks, { reported: answer.reported ?? [] });
  }

  /**
   * Reports finished tasks without claiming (at most 1,000 entries, built with
   * {@link completed} and {@link failed}), in one request; resolves to one outcome per entry,
   * in order. A refused entry does not stop the others.
   */
  async report(entries: ReportEntry[]): Promise<Reported[]> {
    const answer = await this.request<{ reported: Reported[] }>("POST", "/api/tasks/report", {
      body: { report: entries },
    });
    return answer.reported;
  }

  /** Extends a claimed task's lease; resolves to the new deadline. {@link ConflictError} when stale. */
  async extend(task: ClaimedTask, leaseMs?: number): Promise<number> {
    const body: Record<string, unknown> = { lease: task.lease };
    if (leaseMs !== undefined) body.lease_ms = leaseMs;
    const answer = await this.request<{ deadline_ms: number }>("POST", `/api/tasks/${segment(task.id)}/extend`, { body });
    task.deadline_ms = answer.deadline_ms;
    return answer.deadline_ms;
  }

  /** Marks a claimed task done, with an optional JSON `result`. */
  async complete(task: ClaimedTask, result?: unknown): Promise<void> {
    const body: Record<string, unknown> = { lease: task.lease };
    if (result !== undefined) body.result = result;
    await this.request("POST", `/api/tasks/${segment(task.id)}/complete`, { body });
  }

  /** Reports a claimed task failed: retried later (`pending`) or dead-lettered (`failed`). */
  fail(task: ClaimedTask, error: string): Promise<FailAnswer> {
    return this.request("POST", `/api/tasks/${segment(task.id)}/fail`, { body: { lease: task.lease, error } });
  }

  /** The dead-lettered tasks. */
  deadLetters(limit?: number): Promise<TaskList> {
    return this.request("GET", "/api/tasks/dead", { query: { limit } });
  }

  /** Queues dead-lettered tasks again (`ids`, or `"all"`); resolves to how many. */
  async retryDead(ids: string[] | "all"): Promise<number> {
    const body = ids === "all" ? { all: true } : { ids };
    return (await this.request<{ retried: number }>("POST", "/api/tasks/dead/retry", { body })).retried;
  }

  /** Deletes a dead-lettered task; {@link NotFoundError} when there is none. */
  async deleteDead(id: string): Promise<boolean> {
    return (await this.request<{ deleted: boolean }>("DELETE", `/api/tasks/dead/${segment(id)}`)).deleted;
  }

  /** The delayed tasks. */
  delayed(limit?: number): Promise<TaskList> {
    return this.request("GET", "/api/tasks/delayed", { query: { limit } });
  }

  /** Makes a delayed task due now. */
  async promote(id: string): Promise<boolean> {
    return (await this.request<{ promoted: boolean }>("POST", `/api/tasks/delayed/${segment(id)}/promote`)).promoted;
  }

  /**
   * Runs `handler(task)` on the tasks of `types`, `concurrency` at a time, until
   * `options.signal` aborts; resolves to the counts.
   *
   * Each worker claims one task at a time (long-polling `waitMs`), extends its lease every
   * third of it while the handler runs, then completes it with the handler's result or
   * fails it with the error's text. `task.lost` aborts when an extension was refused.
   * Outages are retried with backoff; a 400 or 401 stops every worker and rejects.
   */
  async work(
    types: string | string[],
    handler: (task: WorkTask) => unknown | Promise<unknown>,
    options: WorkOptions = {},
  ): Promise<WorkStats> {
    const concurrency = options.concurrency ?? 1;
    if (concurrency < 1) throw new RangeError("concurrency must be at least 1");
    const stats: WorkStats = { completed: 0, failed: 0, lost: 0 };
    const halt = new AbortController();
    let fatal: unknown = undefined;
    const stopping = () => options.signal?.aborted === true || halt.signal.aborted;
    const loop = async () => {
      let delay = 50;
      while (!stopping()) {
        let tasks: ClaimedTask[];
        try {
          tasks = await this.claim(types, { max: 1, waitMs: options.waitMs ?? 1000, leaseMs: options.leaseMs });
          delay = 50;
        } catch (e) {
          if (isTransient(e)) {
            await sleep(delay, options.signal);
            delay = Math.min(delay * 2, 2000);
            continue;
          }
          if (fatal === undefined) fatal = e;
          halt.abort();
          return;
        }
        for (const task of tasks) await this.runTask(task, handler, options.leaseMs, stats);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, loop));
    if (fatal !== undefined) throw fatal;
    return stats;
  }

  private async runTask(
    claimed: ClaimedTask,
    handler: (task: WorkTask) => unknown | Promise<unknown>,
    leaseMs: number | undefined,
    stats: WorkStats,
  ): Promise<void> {
    const lost = new AbortController();
    const task: WorkTask = { ...claimed, lost: lost.signal };
    const span = Math.max(MIN_LEASE_MS, leaseMs ?? claimed.deadline_ms - Date.now());
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let inflight: Promise<void> = Promise.resolve();
    const keep = (interval: number) => {
      timer = setTimeout(() => {
        inflight = (async () => {
          if (stopped) return;
          try {
            await this.extend(task, leaseMs);
            if (!stopped) keep(span / 3);
          } catch (e) {
            if (e instanceof ConflictError || e instanceof NotFoundError) return lost.abort(e);
            if (Date.now() >= task.deadline_ms) return lost.abort(e);
            if (!stopped) keep(Math.max(50, span / 10));
          }
        })();
      }, interval);
    };
    keep(span / 3);
    let error: string | null = null;
    let result: unknown;
    try {
      result = await handler(task);
      if (result !== undefined) JSON.stringify(result);
    } catch (e) {
      error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    } finally {
      stopped = true;
      clearTimeout(timer);
      await inflight;
    }
    try {
      await this.untilDeadline<unknown>(task, () => (error === null ? this.complete(task, result) : this.fail(task, error)));
      if (error === null) stats.completed++;
      else stats.failed++;
    } catch (e) {
      if (e instanceof ConflictError || e instanceof NotFoundError || isTransient(e)) stats.lost++;
      else throw e;
    }
  }

  /** Runs `call`, retrying outages until the task's lease deadline. */
  private async untilDeadline<T>(task: ClaimedTask, call: () => Promise<T>): Promise<T> {
    let delay = 50;
    for (;;) {
      try {
        return await call();
      } catch (e) {
        if (!isTransient(e) || Date.now() + delay >= task.deadline_ms) throw e;
        await sleep(delay);
        delay = Math.min(delay * 2, 1000);
      }
    }
  }

  // ------------------------------------------------------------------ locks

  /**
   * Acquires lock `name` for `ttlMs`, waiting up to `waitMs`. {@link LockBusyError} when it
   * was held throughout. The daemon keeps no watchdog for HTTP holders: extend it or lose it
   * at its TTL ({@link withLock} does both).
   */
  async acquireLock(name: string, ttlMs: number, waitMs = 0): Promise<Lease> {
    try {
      return await this.request<Lease>("POST", "/api/locks/acquire", {
        body: { name, ttl_ms: ttlMs, wait_ms: waitMs },
        waitMs,
      });
    } catch (e) {
      if (e instanceof ConflictError) throw new LockBusyError(name, e.message, e.body);
      throw e;
    }
  }

  /** Extends a held lock; resolves to its new expiry. {@link LockLostError} when the token no longer holds it. */
  async extendLock(lease: Lease, ttlMs: number): Promise<number> {
    try {
      const answer = await this.request<{ expires_at_ms: number }>("POST", "/api/locks/extend", {
        body: { name: lease.name, token: lease.token, ttl_ms: ttlMs },
      });
      lease.expires_at_ms = answer.expires_at_ms;
      return answer.expires_at_ms;
    } catch (e) {
      if (e instanceof ConflictError) throw new LockLostError(lease.name, e.message);
      throw e;
    }
  }

  /** Releases a held lock: `true`, or `false` when the token no longer held it. */
  /** The locks the daemon holds now, from its memory (at most 200 listed). */
  heldLocks(): Promise<{ total: number; locks: LockHeldNow[] }> {
    return this.request("GET", "/api/locks/held");
  }

  async releaseLock(lease: Lease): Promise<boolean> {
    try {
      await this.request("POST", "/api/locks/release", { body: { name: lease.name, token: lease.token } });
      return true;
    } catch (e) {
      if (e instanceof ConflictError) return false;
      throw e;
    }
  }

  /**
   * Runs `fn(fence, held)` holding lock `name`: extended every third of `ttlMs` meanwhile,
   * released after. Rejects with {@link LockBusyError} when it was not had within
   * `waitMs`, and with {@link LockLostError} (after `fn` succeeded) when it stopped being
   * ours meanwhile; `held.lost` aborts at that moment.
   *
   * ```ts
   * await client.withLock("bet-lock:user123-agent456", 30_000, async (fence) => placeBet(fence));
   * ```
   */
  async withLock<T>(
    name: string,
    ttlMs: number,
    fn: (fence: number, held: HeldLock) => T | Promise<T>,
    options: { waitMs?: number } = {},
  ): Promise<T> {
    const lease = await this.acquireLock(name, ttlMs, options.waitMs ?? 0);
    const lost = new AbortController();
    let reason = "";
    const lose = (why: string) => {
      if (!lost.signal.aborted) {
        reason = why;
        lost.abort(new LockLostError(name, why));
      }
    };
    let stopped = false;
    let lastOk = Date.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let inflight: Promise<void> = Promise.resolve();
    const keep = (interval: number) => {
      timer = setTimeout(() => {
        inflight = (async () => {
          if (stopped) return;
          try {
            await this.extendLock(lease, ttlMs);
            lastOk = Date.now();
            if (!stopped) keep(ttlMs / 3);
          } catch (e) {
            if (stopped) return;
            if (e instanceof LockLostError) return lose(e.reason);
            if (Date.now() - lastOk >= (ttlMs * 2) / 3) return lose(`no extension succeeded in ${Math.round((ttlMs * 2) / 3)} ms: ${(e as Error).message}`);
            keep(Math.max(10, ttlMs / 10));
          }
        })();
      }, interval);
    };
    keep(ttlMs / 3);
    let result: T;
    try {
      result = await fn(lease.fence, { lease, lost: lost.signal });
    } finally {
      stopped = true;
      clearTimeout(timer);
      await inflight;
      if (!lost.signal.aborted) {
        try {
          if (!(await this.releaseLock(lease))) lose("the daemon says this token no longer held it at release");
        } catch {
          // An outage: the lock expires at its TTL.
        }
      }
    }
    if (lost.signal.aborted) throw new LockLostError(name, reason);
    return result;
  }

  // ------------------------------------------------------------------ shared data

  /** The shared snapshot (seed 000) as the daemon's reader answers it. */
  sharedData(reader?: string): Promise<SharedDataReading> {
    return this.request("GET", "/api/shared-data", { query: { reader } });
  }

  /**
   * Each new round of the shared data, once, in order, starting with the round the daemon
   * holds now. With `reconnect` (default) a broken stream is opened again and rounds already
   * seen are skipped. Abort `signal` (or break out of the loop) to stop.
   */
  sharedDataStream(options: { reader?: string; signal?: AbortSignal; reconnect?: boolean } = {}): AsyncGenerator<SharedDataReading> {
    return this.follow<SharedDataReading>(
      "/api/shared-data/stream",
      { reader: options.reader },
      "snapshot",
      { signal: options.signal, reconnect: options.reconnect ?? true },
      (reading) => reading.timestamp,
    );
  }

  // ------------------------------------------------------------------ admin messages

  /** Sends `message` to the bot of process `pid` (seed 004); resolves to the message id. */
  async adminSend(pid: number, message: string): Promise<string> {
    return String((await this.request<{ id: unknown }>("POST", "/api/admin/send", { body: { pid, message } })).id);
  }

  /** The oldest `max` messages of `pid`'s queue, waiting up to `waitMs` for one; they stay queued until acknowledged. */
  async adminReceive(pid: number, options: { max?: number; waitMs?: number } = {}): Promise<AdminMessage[]> {
    return (await this.adminRead(pid, options.max ?? 100, options.waitMs ?? 0)).messages;
  }

  private adminRead(pid: number, max: number, waitMs: number): Promise<{ messages: AdminMessage[]; stale?: boolean }> {
    return this.request("GET", `/api/admin/inbox/${segment(pid)}`, { query: { max, wait_ms: waitMs }, waitMs });
  }

  /** Removes the messages of `ids` from `pid`'s queue; resolves to how many. */
  async adminAck(pid: number, ids: string[]): Promise<number> {
    return (await this.request<{ acked: number }>("POST", `/api/admin/inbox/${segment(pid)}/ack`, { body: { ids } })).acked;
  }

  /**
   * The messages of `pid`, one by one, in order, until `signal` aborts. Asking for the next
   * message acknowledges the previous one (breaking out of the loop leaves the last one
   * unacknowledged: ack it with {@link adminAck} first). Delivery is at least once: the `id`
   * is the idempotence key, and a repeated id is skipped within one inbox. Outages are
   * waited out.
   *
   * ```ts
   * for await (const m of client.adminInbox(process.pid)) handle(m.message);
   * ```
   */
  async *adminInbox(pid: number, options: { waitMs?: number; batch?: number; signal?: AbortSignal } = {}): AsyncGenerator<AdminMessage> {
    const signal = options.signal;
    const seen = new Set<string>();
    let unacked: string[] = [];
    let delay = 50;
    const flush = async () => {
      if (unacked.length === 0) return;
      try {
        await this.adminAck(pid, unacked);
        unacked = [];
      } catch (e) {
        if (!isTransient(e)) throw e;
      }
    };
    while (!signal?.aborted) {
      let messages: AdminMessage[] = [];
      let stale = false;
      try {
        const answer = await this.adminRead(pid, options.batch ?? 100, options.waitMs ?? 1000);
        messages = answer.messages;
        stale = answer.stale === true;
      } catch (e) {
        if (!isTransient(e)) throw e;
        stale = true;
      }
      if (stale && messages.length === 0) {
        await sleep(delay, signal);
        delay = Math.min(delay * 2, 1000);
        continue;
      }
      delay = 50;
      for (const message of messages) {
        if (seen.has(message.id)) {
          if (!unacked.includes(message.id)) unacked.push(message.id);
          continue;
        }
        seen.add(message.id);
        if (seen.size > 100_000) seen.delete(seen.values().next().value as string);
        yield message;
        unacked.push(message.id);
        await flush();
        if (signal?.aborted) return;
      }
      await flush();
    }
  }

  // ------------------------------------------------------------------ identities

  /** Stores `identity` of `participant` in `room` (`identity:ROOM:PARTICIPANT`, seed 004). */
  async putIdentity(room: string, participant: string, identity: Record<string, unknown>): Promise<void> {
    await this.request("PUT", "/api/identities", { body: { room, participant, identity } });
  }

  /** The identity of `participant` in `room`; {@link NotFoundError} when none. */
  getIdentity(room: string, participant: string): Promise<Record<string, unknown>> {
    return this.request("GET", "/api/identities", { query: { room, participant } });
  }

  /** Deletes an identity: whether there was one. */
  async deleteIdentity(room: string, participant: string): Promise<boolean> {
    return (await this.request<{ deleted: boolean }>("DELETE", "/api/identities", { query: { room, participant } })).deleted;
  }

  /** Every identity of `room`, by participant. */
  async roomIdentities(room: string): Promise<Record<string, Record<string, unknown>>> {
    return (await this.request<{ identities: Record<string, Record<string, unknown>> }>("GET", "/api/identities", { query: { room } })).identities;
  }

  // ------------------------------------------------------------------ heartbeats, peers

  /** Registers (or refreshes) the heartbeat of process `pid` (`heartbeat:PID`); resolves to the record. */
  heartbeat(pid: number, fields: HeartbeatOptions = {}): Promise<Record<string, unknown>> {
    return this.request("PUT", `/api/heartbeats/${segment(pid)}`, { body: fields });
  }

  /** Removes the heartbeat of `pid`: whether there was one. */
  async removeHeartbeat(pid: number): Promise<boolean> {
    return (await this.request<{ deleted: boolean }>("DELETE", `/api/heartbeats/${segment(pid)}`)).deleted;
  }

  /** The processes with a heartbeat. */
  async peers(): Promise<Peer[]> {
    return (await this.request<{ peers: Peer[] }>("GET", "/api/peers")).peers;
  }

  /** Peer events (joined, stale, zombie, left) as they happen, until `signal` aborts. */
  peersStream(options: { signal?: AbortSignal; reconnect?: boolean } = {}): AsyncGenerator<Record<string, unknown>> {
    return this.follow("/api/peers/stream", undefined, "peer", options);
  }

  // ------------------------------------------------------------------ game sessions

  /** Creates or replaces the game session of `user` and `agent` (`gameSession:USER-AGENT`, seed 002). */
  putGameSession(user: string, agent: string, session: Partial<GameSession>): Promise<unknown> {
    return this.request("PUT", `/api/game-sessions/${segment(user)}/${segment(agent)}`, { body: session });
  }

  /** The game session; {@link NotFoundError} when none. */
  getGameSession(user: string, agent: string): Promise<GameSession> {
    return this.request("GET", `/api/game-sessions/${segment(user)}/${segment(agent)}`);
  }

  /**
   * Changes a game session atomically against concurrent updates: the fields of `set` take
   * their values, those of `increment` (`nonce`, `currentStep`, `winAmount`, `betAmount`)
   * grow by theirs. Use `increment` for counters: a `set` computed from an earlier read
   * overwrites concurrent changes. Resolves to the new session.
   */
  updateGameSession(
    user: string,
    agent: string,
    set: Partial<GameSession> = {},
    increment: Partial<Pick<GameSession, "nonce" | "currentStep" | "winAmount" | "betAmount">> = {},
  ): Promise<GameSession> {
    const body: Record<string, unknown> = {};
    if (Object.keys(set).length > 0) body.set = set;
    if (Object.keys(increment).length > 0) body.increment = increment;
    return this.request("PATCH", `/api/game-sessions/${segment(user)}/${segment(agent)}`, { body });
  }

  /** Deletes a game session: whether there was one. */
  async deleteGameSession(user: string, agent: string): Promise<boolean> {
    return (await this.request<{ deleted: boolean }>("DELETE", `/api/game-sessions/${segment(user)}/${segment(agent)}`)).deleted;
  }

  // ------------------------------------------------------------------ fairness

  /** Starts provably fair play with the player's seed: the record with the committed `hashedServerSeed`. */
  fairnessStart(user: string, agent: string, userSeed: string): Promise<FairnessRecord> {
    return this.request("POST", `/api/fairness/${segment(user)}/${segment(agent)}/start`, { body: { user_seed: userSeed } });
  }

  /** The fairness record; {@link NotFoundError} when none. */
  fairness(user: string, agent: string): Promise<FairnessRecord> {
    return this.request("GET", `/api/fairness/${segment(user)}/${segment(agent)}`);
  }

  /** The hazards of the round in play at `difficulty`. */
  fairnessRound(user: string, agent: string, difficulty: string): Promise<PlayerRound> {
    return this.request("GET", `/api/fairness/${segment(user)}/${segment(agent)}/round`, { query: { difficulty } });
  }

  /** Settles the round: reveals its server seed and rotates to a new one. */
  fairnessSettle(user: string, agent: string, nextUserSeed?: string): Promise<SettledSeed> {
    const body = nextUserSeed === undefined ? {} : { next_user_seed: nextUserSeed };
    return this.request("POST", `/api/fairness/${segment(user)}/${segment(agent)}/settle`, { body });
  }

  /** Recomputes the hazards of a settled round from its revealed seed. */
  async fairnessVerify(serverSeed: string, clientSeed: string, nonce: number, difficulty: string): Promise<number[]> {
    const body = { server_seed: serverSeed, client_seed: clientSeed, nonce, difficulty };
    return (await this.request<{ hazards: number[] }>("POST", "/api/fairness/verify", { body })).hazards;
  }
}
