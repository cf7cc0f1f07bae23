// What the daemon tests share: the daemon under test (from the environment, set by the Rust
// suite tests/it/clients.rs) and polling with a deadline.

import { BotfleetClient } from "../src/index.js";

/** The daemon's URL, or null when the tests run without one (they are skipped). */
export const URL_UNDER_TEST: string | null = process.env.BOTFLEET_URL || null;

/** Why a daemon test is skipped, or false. */
export const skip: string | false = URL_UNDER_TEST ? false : "BOTFLEET_URL is not set: run through tests/it/clients.rs";

/** A client of the daemon under test, with its token unless `token` says otherwise. */
export function client(token: string | null | undefined = process.env.BOTFLEET_TOKEN): BotfleetClient {
  return new BotfleetClient(URL_UNDER_TEST ?? "http://127.0.0.1:9", { token: token ?? undefined });
}

/** Calls `condition` until it resolves to something truthy, which it returns; throws after `timeoutMs` naming `what`. */
export async function poll<T>(what: string, condition: () => Promise<T> | T, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A name nobody else uses. */
export function unique(prefix: string): string {
  return `${prefix}-${Math.random().toString(16).slice(2, 10)}`;
}
