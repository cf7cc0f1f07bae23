/** The shapes of the daemon's HTTP API. */

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Options of a {@link BotfleetClient}. */
export interface ClientOptions {
  /** Bearer token (the daemon's `api.token`), sent with every request. */
  token?: string;
  /** Milliseconds to wait for an answer (a long poll adds its wait). Default 10000. */
  timeoutMs?: number;
}

/** A task record (`GET /api/tasks/{id}`). */
export interface Task {
  id: string;
  type: string;
  /** The task's data: parsed JSON when it is valid JSON, else the stored text. */
  data: unknown;
  priority: number;
  status: "pending" | "processing" | "completed" | "failed" | string;
  attempts: number;
  created_at: string;
  updated_at: string;
  run_at: string | number | null;
  last_error: string | null;
}

/** Options of {@link BotfleetClient.addTask}. */
export interface AddTaskOptions {
  /** Higher first. */
  priority?: number;
  /** Hold the task back this long. */
  delayMs?: number;
  /** Attempts before the task is dead-lettered. */
  maxAttempts?: number;
  /** The task's id (default: the daemon picks one). */
  id?: string;
}

/** A task handed out by {@link BotfleetClient.claim}, under a lease. */
export interface ClaimedTask {
  id: string;
  type: string;
  data: unknown;
  priority: number;
  /** 1 for the first delivery, one more per retry. */
  attempt: number;
  /** The token that extend, complete and fail need. */
  lease: string;
  /** When the lease runs out unless extended (Unix ms). */
  deadline_ms: number;
}

/** Options of {@link BotfleetClient.claim}. */
export interface ClaimOptions {
  /** Most tasks (1 to 100). Default 1. */
  max?: number;
  /** How long to wait for one to arrive (0 to 60000). Default 0. */
  waitMs?: number;
  /** The lease's length (default: the daemon's visibility timeout). */
  leaseMs?: number;
  /**
   * Finished tasks to report with the claim (at most 1,000), applied before it: see
   * {@link BotfleetClient.report}; their outcomes come back in the answer's `reported`.
   */
  report?: ReportEntry[];
}

/**
 * A finished task, one entry of a report: with `error` it fails the task, else it completes it
 * (with `result`, any JSON, if given). Build them with {@link completed} and {@link failed}.
 */
export interface ReportEntry {
  id: string;
  lease: string;
  result?: unknown;
  error?: string;
}

/**
 * What became of one report entry: `status` as complete or fail would answer, or `error` with
 * the status the single call would have had (400 bad entry, 404 no such task, 409 stale lease;
 * 503: send it again).
 */
export interface Reported {
  id: string | null;
  status?: "completed" | "pending" | "failed";
  retry_at_ms?: number | null;
  error?: { status: number; message: string; field: string | null };
}

/** What {@link BotfleetClient.claim} resolves to: the tasks, and the outcomes of its `report`. */
export type ClaimedTasks = ClaimedTask[] & { reported: Reported[] };

/** The report entry that completes `task`, with `result` if given. */
export function completed(task: ClaimedTask, result?: unknown): ReportEntry {
  const entry: ReportEntry = { id: task.id, lease: task.lease };
  if (result !== undefined) entry.result = result;
  return entry;
}

/** The report entry that fails `task` with `error`. */
export function failed(task: ClaimedTask, error: string): ReportEntry {
  return { id: task.id, lease: task.lease, error };
}

/** What {@link BotfleetClient.fail} answers. */
export interface FailAnswer {
  /** `pending`: retried at `retry_at_ms`; `failed`: dead-lettered. */
  status: "pending" | "failed";
  retry_at_ms: number | null;
}

/** A page of tasks (dead letters, delayed). */
export interface TaskList {
  tasks: Task[];
  total: number;
}

/** A task in the hands of a {@link BotfleetClient.work} handler. */
export interface WorkTask extends ClaimedTask {
  /** Aborted when the lease was lost (another worker may have the task now). */
  lost: AbortSignal;
}

/** Options of {@link BotfleetClient.work}. */
export interface WorkOptions {
  /** Tasks handled at once. Default 1. */
  concurrency?: number;
  /** Stops the workers: the tasks in hand finish, then `work` resolves. */
  signal?: AbortSignal;
  /** Lease length asked for (default: the daemon's visibility timeout). */
  leaseMs?: number;
  /** Long-poll wait of each claim. Default 1000. */
  waitMs?: number;
}

/** What {@link BotfleetClient.work} did. */
export interface WorkStats {
  completed: number;
  failed: number;
  /** Finished after the lease was gone: another worker has the task. */
  lost: number;
}

/** A held lock (`POST /api/locks/acquire`). */
/** A lock the daemon holds now (`GET /api/locks/held`); the token is never shown. */
export interface LockHeldNow {
  name: string;
  /** `guard`: the daemon's own services; `local`: granted in-process during an outage; `lease`: handed out over HTTP. */
  holder: "guard" | "local" | "lease";
  fence: number | null;
  expires_at_ms: number | null;
  ttl_left_ms: number | null;
}

export interface Lease {
  name: string;
  /** The holder's token: extend and release need it. */
  token: string;
  /** Fencing token, strictly increasing per name. */
  fence: number;
  expires_at_ms: number;
}

/** What a {@link BotfleetClient.withLock} function gets besides the fence. */
export interface HeldLock {
  /** The lease. */
  lease: Lease;
  /** Aborted when the lock stopped being ours. */
  lost: AbortSignal;
}

/** The seed 000 snapshot (`fivem_red_green_shared_data`). */
export interface SharedSnapshot {
  timestamp: number;
  game_data: unknown;
  processed_data?: {
    issue_number?: number;
    colors?: string;
    result_format?: string;
    game_type?: string;
    last_update?: number;
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

/** `GET /api/shared-data`: what the daemon's reader answers. */
export interface SharedDataReading {
  snapshot: SharedSnapshot | null;
  timestamp: number | null;
  age_ms: number | null;
  origin: string;
  stale: boolean;
  [key: string]: unknown;
}

/** One admin message (seed 004). `id` is the idempotence key. */
export interface AdminMessage {
  id: string;
  from: string | null;
  message: string;
  sent_at: number | null;
  raw: string;
}

/** A heartbeat's fields (`PUT /api/heartbeats/{pid}`). */
export interface HeartbeatOptions {
  room_url?: string;
  participants?: string[];
  status?: string;
}

/** A process with a heartbeat, as the peer monitor sees it. */
export interface Peer {
  pid?: number | string;
  [key: string]: unknown;
}

/** A game session (seed 002, `gameSession:USER-AGENT`), camelCase. */
export interface GameSession {
  userId: string;
  agentId: string;
  currency: string;
  difficulty: string;
  serverSeed: string;
  userSeed: string;
  hashedServerSeed: string;
  nonce: number;
  coefficients: string[];
  currentStep: number;
  winAmount: number;
  betAmount: number;
  isActive: boolean;
  isWin: boolean;
  createdAt: string;
  platformBetTxId: string;
  roundId: string;
  collisionColumns: number[];
}

/** A player's provably fair state (`fairness:USER:AGENT`). */
export interface FairnessRecord {
  userId: string;
  agentId: string;
  userSeed: string;
  /** SHA-256 of the server seed, committed before any round. */
  hashedServerSeed: string;
  nonce: number;
}

/** The hazards of a player's round in play. */
export interface PlayerRound {
  difficulty: string;
  /** Column indices, ascending. */
  hazards: number[];
  nonce: number;
  userSeed: string;
  hashedServerSeed: string;
}

/** What a settlement reveals: everything needed to verify the round. */
export interface SettledSeed {
  serverSeed: string;
  hashedServerSeed: string;
  userSeed: string;
  nonce: number;
  /** The record now in force. */
  next: FairnessRecord;
}
