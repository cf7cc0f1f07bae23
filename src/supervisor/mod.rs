//! Supervision: restart policy, stable actor handles, health, ordered start and stop.
