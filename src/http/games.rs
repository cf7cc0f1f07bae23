//! Game sessions and provably fair seeds over HTTP (seed 002), for a game backend in any
//! language that runs `botfleet run` beside it:
//!
//! - `/api/game-sessions/{user}/{agent}`: `gameSession:USER-AGENT` created or replaced (PUT),
//!   read (GET), changed (PATCH) and deleted (DELETE) through [`GameSessions`]. A PATCH is
//!   `{"set": {FIELD: VALUE...}, "increment": {FIELD: NUMBER...}}` (either or both), applied by
//!   [`GameSessions::try_update`]: read, change, compare-and-set, again on contention, so that
//!   no update of another process or daemon is lost; `increment` is what a counter needs (a
//!   `set` computed by the client from an earlier read would overwrite a concurrent change).
//! - `/api/fairness/...`: a player's record `fairness:USER:AGENT` started, read, its round in
//!   play derived, settled (the server seed revealed, a new one committed), and any past round
//!   verified, through [`Hazards`](crate::actors::hazards::Hazards).
//!
//! Bodies are checked before anything is stored: a field a [`GameSession`] does not have, a
//! value of the wrong type, a user or agent id the key layout cannot hold answer 400 naming the
//! field (`set.currentStep`, `user`). Bodies and answers use the seed's camelCase fields for
//! the records, snake_case for the request fields of the fairness calls, as `api.md` fixes.
//! [`HazardError`]s map to 400 (bad input), 404 (no session, no record), 409 (a
//! compare-and-set lost every round, or a settlement that met another), 503 (the storage
//! refused the write), 500 (a stored value that is not what botfleet writes).

use std::sync::OnceLock;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::bot::{parse_json, ApiError};
use super::AppState;
use crate::actors::hazards::sessions::GameSession;
use crate::actors::hazards::{check_id, HazardError, MAX_ID_BYTES};
use crate::storage::StorageError;

/// Longest seed accepted (user seed, server seed, client seed), in bytes.
pub(crate) const MAX_SEED_BYTES: usize = 256;

/// Fields a GET of a session adds (its freshness), which a PUT of what was read ignores.
const READ_ONLY: &[&str] = &["stale", "as_of_ms"];

/// Registers the routes of this area, each with its full path, one per line (the `openapi`
/// suite reads them from the source).
#[rustfmt::skip]
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/game-sessions/{user}/{agent}", web::put().to(put_session))
        .route("/api/game-sessions/{user}/{agent}", web::get().to(get_session))
        .route("/api/game-sessions/{user}/{agent}", web::patch().to(patch_session))
        .route("/api/game-sessions/{user}/{agent}", web::delete().to(delete_session))
        .route("/api/fairness/verify", web::post().to(verify))
        .route("/api/fairness/{user}/{agent}", web::get().to(get_fairness))
        .route("/api/fairness/{user}/{agent}/start", web::post().to(start_fairness))
        .route("/api/fairness/{user}/{agent}/round", web::get().to(round))
        .route("/api/fairness/{user}/{agent}/settle", web::post().to(settle));
}

impl From<HazardError> for ApiError {
    fn from(e: HazardError) -> Self {
        match &e {
            HazardError::UnknownDifficulty(_) => ApiError::bad_field("difficulty", e.to_string()),
            HazardError::EmptySeed(which) => {
                ApiError::bad_field(&which.replace(' ', "_"), e.to_string())
            }
            HazardError::NegativeNonce(_) => ApiError::bad_field("nonce", e.to_string()),
            HazardError::InvalidId { what, .. } => {
                let field = what.split(' ').next().unwrap_or("id");
                ApiError::bad_field(field, id_rule())
            }
            HazardError::NoFairnessRecord { .. } => ApiError::NotFound(e.to_string()),
            HazardError::Contended { .. } => ApiError::Conflict(e.to_string()),
            HazardError::Storage(StorageError::Command(_)) | HazardError::Corrupt { .. } => {
                ApiError::Internal(e.to_string())
            }
            HazardError::Storage(_) => ApiError::Unavailable(format!("storage refused: {e}")),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

/// `value` with `"stale"` and `"as_of_ms"`: during an outage a read answers from last-known
/// state, as of the last moment Redis answered.
fn with_freshness(state: &AppState, mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        let freshness = state.fleet.storage().freshness();
        object.insert("stale".into(), json!(freshness.stale));
        object.insert("as_of_ms".into(), json!(freshness.as_of_ms));
    }
    value
}

/// The `key=value` pairs of the query string (400 when it does not parse).
fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest {
            field: None,
            message: format!("invalid query string: {e}"),
        })
}

fn id_rule() -> String {
    format!(
        "expected 1 to {MAX_ID_BYTES} bytes, without `:`, braces, white space or control \
         characters"
    )
}

/// The user and agent ids of the path, checked as the key layout needs them.
fn ids(path: web::Path<(String, String)>) -> Result<(String, String), ApiError> {
    let (user, agent) = path.into_inner();
    check_id("user id", &user)?;
    check_id("agent id", &agent)?;
    Ok((user, agent))
}

/// A seed given in a body: not empty, at most [`MAX_SEED_BYTES`].
fn check_seed(field: &str, seed: &str) -> Result<(), ApiError> {
    if seed.is_empty() {
        return Err(ApiError::bad_field(field, "must not be empty"));
    }
    if seed.len() > MAX_SEED_BYTES {
        return Err(ApiError::bad_field(
            field,
            format!("at most {MAX_SEED_BYTES} bytes"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Game sessions
// ---------------------------------------------------------------------------------------------

/// The fields of a [`GameSession`] (camelCase) with their default values: what a body may
/// name, and, from each default's JSON type, which fields are numbers.
fn session_fields() -> &'static Map<String, Value> {
    static FIELDS: OnceLock<Map<String, Value>> = OnceLock::new();
    FIELDS.get_or_init(|| match serde_json::to_value(GameSession::default()) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    })
}

fn field_names() -> String {
    session_fields()
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the names in `fields` against [`GameSession`]'s (`prefix` names the body's part for
/// the error: `set.`), and that `userId` and `agentId`, if given, are the path's.
fn check_names(
    prefix: &str,
    fields: &Map<String, Value>,
    user: &str,
    agent: &str,
) -> Result<(), ApiError> {
    for (name, value) in fields {
        if !session_fields().contains_key(name) {
            return Err(ApiError::bad_field(
                &format!("{prefix}{name}"),
                format!("unknown field: a game session has {}", field_names()),
            ));
        }
        let path_value = match name.as_str() {
            "userId" => user,
            "agentId" => agent,
            _ => continue,
        };
        if value.as_str() != Some(path_value) {
            return Err(ApiError::bad_field(
                &format!("{prefix}{name}"),
                format!("must be the path's id {path_value:?} (the session's key)"),
            ));
        }
    }
    Ok(())
}

/// `fields` as a [`GameSession`]; a value of the wrong type answers 400 naming the field, as
/// `blame` names it (`set.` or `increment.` before the name).
fn to_session(
    fields: Map<String, Value>,
    blame: impl Fn(&str) -> String,
) -> Result<GameSession, ApiError> {
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
        let field = e.path().to_string();
        let field = field.split('.').next().unwrap_or_default().to_string();
        let field = field.split('[').next().unwrap_or_default();
        ApiError::bad_field(&blame(field), e.inner().to_string())
    })
}

/// `PUT /api/game-sessions/{user}/{agent}`: creates or replaces the session (fresh TTL) and
/// lists the user in `user-sessions:AGENT`; 201 with the session stored. Fields left out take
/// their defaults; `userId` and `agentId` come from the path.
async fn put_session(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let mut fields: Map<String, Value> = parse_json(&body)?;
    fields.retain(|name, _| !READ_ONLY.contains(&name.as_str()));
    check_names("", &fields, &user, &agent)?;
    let mut session = to_session(fields, str::to_owned)?;
    session.user_id = user;
    session.agent_id = agent;
    state.fleet.game_sessions().create(&session).await?;
    Ok(HttpResponse::Created().json(session))
}

/// `GET /api/game-sessions/{user}/{agent}`: the session, with `stale` and `as_of_ms`; 404.
async fn get_session(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let session = state
        .fleet
        .game_sessions()
        .get(&user, &agent)
        .await?
        .ok_or_else(|| no_session(&user, &agent))?;
    let value = serde_json::to_value(session).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(with_freshness(&state, value)))
}

fn no_session(user: &str, agent: &str) -> ApiError {
    ApiError::NotFound(format!("no game session for user {user} agent {agent}"))
}

/// Body of `PATCH /api/game-sessions/{user}/{agent}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionPatch {
    /// Fields to set to these values.
    #[serde(default)]
    set: Map<String, Value>,
    /// Numeric fields to raise (or lower) by these amounts.
    #[serde(default)]
    increment: Map<String, Value>,
}

/// An amount to add to a numeric field.
#[derive(Debug, Clone, Copy)]
enum Amount {
    /// To an integer field (`nonce`, `currentStep`).
    Integer(i64),
    /// To a floating-point field (`winAmount`, `betAmount`).
    Float(f64),
}

fn numeric_fields() -> Vec<&'static str> {
    session_fields()
        .iter()
        .filter(|(_, value)| value.is_number())
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The amounts of `increment`, checked: numeric fields only, not also in `set`, an integer for
/// an integer field.
fn amounts(patch: &SessionPatch) -> Result<Vec<(String, Amount)>, ApiError> {
    let mut amounts = Vec::new();
    for (name, value) in &patch.increment {
        let field = format!("increment.{name}");
        let default = session_fields().get(name).filter(|v| v.is_number());
        let Some(default) = default else {
            return Err(ApiError::bad_field(
                &field,
                format!(
                    "not a numeric field of a game session: expected one of {}",
                    numeric_fields().join(", ")
                ),
            ));
        };
        if patch.set.contains_key(name) {
            return Err(ApiError::bad_field(
                &field,
                "the field is also in set: give one or the other",
            ));
        }
        let amount = if default.is_f64() {
            value.as_f64().map(Amount::Float)
        } else {
            value.as_i64().map(Amount::Integer)
        };
        let amount = amount.ok_or_else(|| {
            let kind = if default.is_f64() {
                "a number"
            } else {
                "an integer"
            };
            ApiError::bad_field(&field, format!("expected {kind}, got {value}"))
        })?;
        amounts.push((name.clone(), amount));
    }
    Ok(amounts)
}

/// The session with `set` and `amounts` applied; a sum out of the field's range answers 400
/// naming it (nothing is written).
fn apply(
    session: &GameSession,
    set: &Map<String, Value>,
    amounts: &[(String, Amount)],
) -> Result<GameSession, ApiError> {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(session) else {
        return Err(ApiError::Internal("a game session is a JSON object".into()));
    };
    for (name, value) in set {
        fields.insert(name.clone(), value.clone());
    }
    for (name, amount) in amounts {
        let field = format!("increment.{name}");
        let old = fields.get(name).cloned().unwrap_or(Value::Null);
        let new = match *amount {
            Amount::Integer(by) => old
                .as_u64()
                .and_then(|old| i128::from(old).checked_add(i128::from(by)))
                .and_then(|sum| u64::try_from(sum).ok())
                .map(Value::from),
            Amount::Float(by) => old
                .as_f64()
                .and_then(|old| serde_json::Number::from_f64(old + by))
                .map(Value::Number),
        };
        let new = new.ok_or_else(|| {
            ApiError::bad_field(
                &field,
                format!("{old} + the amount leaves the field's range"),
            )
        })?;
        fields.insert(name.clone(), new);
    }
    to_session(fields, |name| {
        if amounts.iter().any(|(n, _)| n == name) {
            format!("increment.{name}")
        } else {
            format!("set.{name}")
        }
    })
}

/// `PATCH /api/game-sessions/{user}/{agent}`: `set` and `increment` applied to the stored
/// session with a compare-and-set, retried on contention; 200 with the new session; 404.
async fn patch_session(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let patch: SessionPatch = parse_json(&body)?;
    if patch.set.is_empty() && patch.increment.is_empty() {
        return Err(ApiError::bad_field(
            "set",
            "nothing to change: give set, increment or both",
        ));
    }
    check_names("set.", &patch.set, &user, &agent)?;
    let amounts = amounts(&patch)?;
    // The types of `set` are checked once here, on the defaults, before any read.
    apply(&GameSession::default(), &patch.set, &[])?;
    let session = state
        .fleet
        .game_sessions()
        .try_update(&user, &agent, |session| {
            *session = apply(session, &patch.set, &amounts)?;
            Ok::<(), ApiError>(())
        })
        .await?
        .ok_or_else(|| no_session(&user, &agent))?;
    Ok(HttpResponse::Ok().json(session))
}

/// `DELETE /api/game-sessions/{user}/{agent}`: `{"deleted": bool}`.
async fn delete_session(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let deleted = state.fleet.game_sessions().delete(&user, &agent).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": deleted })))
}

// ---------------------------------------------------------------------------------------------
// Fairness
// ---------------------------------------------------------------------------------------------

/// Body of `POST /api/fairness/{user}/{agent}/start`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartFairness {
    /// The player's (client) seed.
    user_seed: String,
}

/// Body of `POST /api/fairness/{user}/{agent}/settle` (may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleRound {
    /// The player's seed from the next round on; the current one when absent.
    #[serde(default)]
    next_user_seed: Option<String>,
}

/// Body of `POST /api/fairness/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRound {
    server_seed: String,
    client_seed: String,
    nonce: i64,
    difficulty: String,
}

/// `POST /api/fairness/{user}/{agent}/start`: a new server seed (its hash recorded), the
/// player's seed, nonce 0; the record (never the seed).
async fn start_fairness(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let request: StartFairness = parse_json(&body)?;
    check_seed("user_seed", &request.user_seed)?;
    let record = state
        .fleet
        .hazards()
        .start_fairness(&user, &agent, &request.user_seed)
        .await?;
    Ok(HttpResponse::Ok().json(record))
}

/// `GET /api/fairness/{user}/{agent}`: the record, with `stale` and `as_of_ms`; 404.
async fn get_fairness(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let record = state
        .fleet
        .hazards()
        .fairness(&user, &agent)
        .await?
        .ok_or_else(|| {
            ApiError::from(HazardError::NoFairnessRecord {
                user: user.clone(),
                agent: agent.clone(),
            })
        })?;
    let value = serde_json::to_value(record).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(with_freshness(&state, value)))
}

/// A difficulty of `hazards.difficulties`, or 400 naming `difficulty` and listing them.
fn difficulty(state: &AppState, name: &str) -> Result<(), ApiError> {
    let difficulties = &state.fleet.settings().hazards.difficulties;
    if difficulties.iter().any(|d| d.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = difficulties.iter().map(|d| d.name.as_str()).collect();
    Err(ApiError::bad_field(
        "difficulty",
        format!(
            "unknown difficulty {name:?}: expected one of {}",
            names.join(", ")
        ),
    ))
}

/// `GET /api/fairness/{user}/{agent}/round?difficulty=D`: the hazards of the round in play,
/// with `stale` and `as_of_ms`; 404 without a record.
async fn round(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let mut wanted = None;
    for (key, value) in query_pairs(&req)? {
        match key.as_str() {
            "difficulty" => wanted = Some(value),
            other => {
                return Err(ApiError::bad_field(
                    other,
                    "unknown parameter: expected difficulty",
                ))
            }
        }
    }
    let wanted = wanted.ok_or_else(|| {
        ApiError::bad_field("difficulty", "required: ?difficulty=NAME (e.g. EASY)")
    })?;
    difficulty(&state, &wanted)?;
    let round = state.fleet.hazards().round(&user, &agent, &wanted).await?;
    let value = serde_json::to_value(round).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(with_freshness(&state, value)))
}

/// `POST /api/fairness/{user}/{agent}/settle`: reveals the server seed of the round in play
/// and commits a new one with the next nonce; 404 without a record, 409 when another
/// settlement of the same round won.
async fn settle(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let (user, agent) = ids(path)?;
    let request: SettleRound = if body.iter().all(u8::is_ascii_whitespace) {
        SettleRound::default()
    } else {
        parse_json(&body)?
    };
    if let Some(seed) = &request.next_user_seed {
        check_seed("next_user_seed", seed)?;
    }
    let settled = state
        .fleet
        .hazards()
        .settle(&user, &agent, request.next_user_seed.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(settled))
}

/// `POST /api/fairness/verify`: the hazards of any round from its seeds (stores nothing), and
/// the SHA-256 of the server seed to compare with the hash published before the round.
async fn verify(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, ApiError> {
    let request: VerifyRound = parse_json(&body)?;
    check_seed("server_seed", &request.server_seed)?;
    check_seed("client_seed", &request.client_seed)?;
    if request.nonce < 0 {
        return Err(ApiError::bad_field(
            "nonce",
            format!("must be >= 0, got {}", request.nonce),
        ));
    }
    difficulty(&state, &request.difficulty)?;
    let hazards = state.fleet.hazards().verify(
        &request.server_seed,
        &request.client_seed,
        request.nonce,
        &request.difficulty,
    )?;
    Ok(HttpResponse::Ok().json(json!({
        "hazards": hazards,
        "difficulty": request.difficulty,
        "nonce": request.nonce,
        "hashed_server_seed": crate::actors::hazards::fairness::hash_seed(&request.server_seed),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::ResponseError;

    fn status(e: HazardError) -> (StatusCode, Option<String>) {
        let e = ApiError::from(e);
        let field = match &e {
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        (e.status_code(), field)
    }

    #[test]
    fn hazard_errors_map_to_their_status_and_field() {
        let bad = |f: &str| (StatusCode::BAD_REQUEST, Some(f.to_string()));
        assert_eq!(
            status(HazardError::UnknownDifficulty("X".into())),
            bad("difficulty")
        );
        assert_eq!(
            status(HazardError::EmptySeed("user seed")),
            bad("user_seed")
        );
        assert_eq!(
            status(HazardError::EmptySeed("server seed")),
            bad("server_seed")
        );
        assert_eq!(status(HazardError::NegativeNonce(-1)), bad("nonce"));
        assert_eq!(
            status(HazardError::InvalidId {
                what: "agent id",
                value: "a:b".into()
            }),
            bad("agent")
        );
        assert_eq!(
            status(HazardError::NoFairnessRecord {
                user: "u".into(),
                agent: "a".into()
            })
            .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(HazardError::Contended {
                key: "k".into(),
                attempts: 3
            })
            .0,
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(HazardError::Storage(StorageError::MemoryFull {
                max_bytes: 1
            }))
            .0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(HazardError::Storage(StorageError::OutboxFull {
                max_entries: 1
            }))
            .0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(HazardError::Corrupt {
                key: "k".into(),
                reason: "r".into()
            })
            .0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn numeric_fields_come_from_the_session_type() {
        let mut numeric = numeric_fields();
        numeric.sort_unstable();
        assert_eq!(
            numeric,
            ["betAmount", "currentStep", "nonce", "winAmount"],
            "a new numeric field of GameSession: check that increments suit it"
        );
    }

    #[test]
    fn increments_and_sets_apply_and_stay_in_range() {
        let session = GameSession {
            current_step: 2,
            win_amount: 1.5,
            ..GameSession::default()
        };
        let set: Map<String, Value> =
            serde_json::from_str(r#"{"isActive": true, "collisionColumns": [1, 2]}"#).unwrap();
        let amounts = vec![
            ("currentStep".to_string(), Amount::Integer(3)),
            ("winAmount".to_string(), Amount::Float(0.25)),
        ];
        let new = apply(&session, &set, &amounts).unwrap();
        assert_eq!(new.current_step, 5);
        assert_eq!(new.win_amount, 1.75);
        assert!(new.is_active);
        assert_eq!(new.collision_columns, [1, 2]);

        let below = vec![("currentStep".to_string(), Amount::Integer(-3))];
        let err = apply(&session, &Map::new(), &below).unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest { field: Some(f), .. } if f == "increment.currentStep"),
            "{err:?}"
        );
        let above = vec![(
            "currentStep".to_string(),
            Amount::Integer(i64::from(u32::MAX)),
        )];
        let err = apply(&session, &Map::new(), &above).unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest { field: Some(f), .. } if f == "increment.currentStep"),
            "{err:?}"
        );
        let wrong: Map<String, Value> = serde_json::from_str(r#"{"isWin": "yes"}"#).unwrap();
        let err = apply(&session, &wrong, &[]).unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest { field: Some(f), .. } if f == "set.isWin"),
            "{err:?}"
        );
    }
}
