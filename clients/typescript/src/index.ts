/**
 * botfleet-client: the HTTP API of a `botfleet run` daemon from Node 18+ (global `fetch`,
 * no runtime dependencies).
 *
 * ```ts
 * import { BotfleetClient } from "botfleet-client";
 * const client = new BotfleetClient("http://127.0.0.1:8080", { token: process.env.BOTFLEET_TOKEN });
 * await client.withLock("bet-lock:user123-agent456", 30_000, async (fence) => placeBet(fence));
 * ```
 */

export { BotfleetClient, isTransient } from "./client.js";
export {
  BadRequestError,
  BotfleetError,
  ConflictError,
  LockBusyError,
  LockLostError,
  NotFoundError,
  TransportError,
  UnauthorizedError,
  UnavailableError,
  errorFor,
} from "./errors.js";
export { SseParser } from "./sse.js";
export type { ServerSentEvent } from "./sse.js";
export type * from "./types.js";
export { completed, failed } from "./types.js";
