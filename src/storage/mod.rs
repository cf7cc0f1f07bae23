//! Storage: the one path to Redis, the fallbacks, modes, outbox and replay.
