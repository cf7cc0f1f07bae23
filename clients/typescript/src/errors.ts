/**
 * Errors of the botfleet client. Every error answer of the daemon is a {@link BotfleetError}
 * with the HTTP `status`, the daemon's message and, for a 400, the `field` it blames; one
 * subclass per status the API documents.
 */

/** An error answered by the daemon, or the daemon not answering ({@link TransportError}). */
export class BotfleetError extends Error {
  /** The HTTP status; `null` when no answer came. */
  readonly status: number | null;
  /** The request field the daemon blames (400), else `null`. */
  readonly field: string | null;
  /** The whole decoded answer, when it was JSON. */
  readonly body: unknown;

  constructor(message: string, status: number | null = null, field: string | null = null, body: unknown = null) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.field = field;
    this.body = body;
  }
}

/** 400: refused as bad; `field` names the culprit. Nothing was stored. */
export class BadRequestError extends BotfleetError {}

/** 401: a mutation without the right bearer token (the daemon's `api.token`). */
export class UnauthorizedError extends BotfleetError {}

/** 404: no such task, identity, session... (or no such endpoint). */
export class NotFoundError extends BotfleetError {}

/** 409: a stale task lease, a lock token that no longer holds its lock, a lost race. */
export class ConflictError extends BotfleetError {}

/** 503: the daemon's storage refused, or Redis is needed and away. Nothing was stored. */
export class UnavailableError extends BotfleetError {}

/** No answer: connection refused or broken, or timed out. Whether a mutation applied is unknown. */
export class TransportError extends BotfleetError {}

/** The lock was held by another holder for the whole wait. */
export class LockBusyError extends ConflictError {
  /** The lock's name. */
  readonly lockName: string;

  constructor(lockName: string, message: string, body: unknown = null) {
    super(`${lockName}: ${message}`, 409, null, body);
    this.lockName = lockName;
  }
}

/**
 * A lock held through {@link BotfleetClient.withLock} stopped being ours before its release:
 * the daemon refused an extension, or none succeeded within two thirds of its TTL.
 */
export class LockLostError extends BotfleetError {
  /** The lock's name. */
  readonly lockName: string;
  /** Why it was lost. */
  readonly reason: string;

  constructor(lockName: string, reason: string) {
    super(`lock ${JSON.stringify(lockName)} lost: ${reason}`);
    this.lockName = lockName;
    this.reason = reason;
  }
}

const BY_STATUS: Record<number, new (m: string, s: number, f: string | null, b: unknown) => BotfleetError> = {
  400: BadRequestError,
  401: UnauthorizedError,
  404: NotFoundError,
  409: ConflictError,
  503: UnavailableError,
};

/** The error of an answer with `status` >= 400 and decoded `body`. */
export function errorFor(status: number, body: unknown, fallback: string): BotfleetError {
  let message = fallback;
  let field: string | null = null;
  if (body !== null && typeof body === "object") {
    const b = body as { error?: unknown; field?: unknown };
    if (typeof b.error === "string") message = b.error;
    if (typeof b.field === "string") field = b.field;
  }
  const Cls = BY_STATUS[status] ?? BotfleetError;
  return new Cls(message, status, field, body);
}
