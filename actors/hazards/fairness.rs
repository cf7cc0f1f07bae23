//! Provably fair hazard positions: the derivation, seeds and their hashes. Pure functions, no
//! storage: `botfleet verify` and the ticker call the same code.
//!
//! # Derivation (the procedure `botfleet verify` reproduces)
//!
//! Inputs: a server seed `S` and a client seed `C` (non-empty UTF-8 strings), a nonce `N`
//! (a non-negative integer written in decimal without leading zeros), and a difficulty with
//! `K` columns and `H` hazards (`1 <= H < K`).
//!
//! 1. A byte stream: block 0 is `HMAC-SHA256(key = S, message = "C:N")`; block `r >= 1` is
//!    `HMAC-SHA256(key = S, message = "C:N:r")`. Blocks are concatenated in order.
//! 2. The stream is read as 32-bit unsigned integers, big-endian, 4 bytes at a time.
//! 3. A partial Fisher–Yates shuffle of the columns `[0, 1, ..., K-1]`: for `i` in `0..H`,
//!    let `n = K - i`; draw `j` uniformly in `0..n` by rejection: read the next integer `w`;
//!    if `w >= 2^32 - (2^32 mod n)` discard it and read another; otherwise `j = w mod n`.
//!    Swap positions `i` and `i + j`.
//! 4. The hazards are the first `H` entries, sorted ascending.
//!
//! Every column set of size `H` is equally likely (the draws are unbiased), and the result
//! depends only on the inputs.
//!
//! A server seed is 32 random bytes written as 64 lowercase hex characters; its published
//! hash is the SHA-256 of that text (its UTF-8 bytes), as 64 lowercase hex characters.
//!
//! # Which seeds a round uses
//!
//! - A ticker round of difficulty `D` at tick `N`: client seed `D`, nonce `N`, and the server
//!   seed of the tick's epoch (`N / hazards.rotate_every_ticks`), whose hash was published one
//!   epoch before and which is revealed once the epoch is over.
//! - A player's round: client seed the player's `userSeed`, nonce the record's `nonce`, and
//!   the record's server seed, revealed by `Hazards::settle`.
//!
//! Anyone can check a round once its seed is revealed (`botfleet verify` reads the
//! difficulty's columns and hazards from `[[hazards.difficulties]]`):
//!
//! ```text
//! botfleet verify --server-seed SEED --client-seed EASY --nonce TICK --difficulty EASY
//! botfleet verify --server-seed SEED --client-seed USER_SEED --nonce NONCE --difficulty D
//! ```
//!
//! The history archive keeps both: a round's seed is found by its epoch, and a settlement row
//! holds everything but the difficulty (the same seeds serve every difficulty).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::HazardError;
use crate::settings::DifficultySettings;

type HmacSha256 = Hmac<Sha256>;

/// A fresh server seed: 32 random bytes from the OS-seeded generator, as lowercase hex.
pub fn new_server_seed() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The SHA-256 of `seed` (its UTF-8 bytes) as lowercase hex: the commitment published before
/// the seed is used.
pub fn hash_seed(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

/// Checks the inputs of a derivation: typed errors for empty seeds, a negative nonce, and a
/// difficulty whose hazards do not fit its columns.
pub fn check_inputs(
    server_seed: &str,
    client_seed: &str,
    nonce: i64,
    difficulty: &DifficultySettings,
) -> Result<u64, HazardError> {
    if server_seed.is_empty() {
        return Err(HazardError::EmptySeed("server seed"));
    }
    if client_seed.is_empty() {
        return Err(HazardError::EmptySeed("client seed"));
    }
    if nonce < 0 {
        return Err(HazardError::NegativeNonce(nonce));
    }
    if difficulty.hazards == 0 || difficulty.hazards >= difficulty.columns {
        return Err(HazardError::TooManyHazards {
            difficulty: difficulty.name.clone(),
            hazards: difficulty.hazards,
            columns: difficulty.columns,
        });
    }
    Ok(nonce as u64)
}

/// The hazards of one round, by the procedure in this module's documentation.
pub fn derive_hazards(
    server_seed: &str,
    client_seed: &str,
    nonce: i64,
    difficulty: &DifficultySettings,
) -> Result<Vec<u32>, HazardError> {
    let nonce = check_inputs(server_seed, client_seed, nonce, difficulty)?;
    let mut stream = WordStream::new(server_seed, client_seed, nonce);
    let columns = difficulty.columns;
    let mut board: Vec<u32> = (0..columns).collect();
    for i in 0..difficulty.hazards {
        let n = columns - i;
        let j = stream.uniform(n);
        board.swap(i as usize, (i + j) as usize);
    }
    let mut hazards = board[..difficulty.hazards as usize].to_vec();
    hazards.sort_unstable();
    Ok(hazards)
}

/// The stream of 32-bit integers of step 1 and 2.
struct WordStream {
    mac: HmacSha256,
    prefix: String,
    block: [u8; 32],
    pos: usize,
    round: u64,
}

impl WordStream {
    fn new(server_seed: &str, client_seed: &str, nonce: u64) -> Self {
        // HMAC accepts keys of any length: new_from_slice cannot fail for it.
        let mac = HmacSha256::new_from_slice(server_seed.as_bytes())
            .expect("HMAC takes keys of any length");
        let prefix = format!("{client_seed}:{nonce}");
        let block = Self::compute(&mac, prefix.as_bytes());
        Self {
            mac,
            prefix,
            block,
            pos: 0,
            round: 0,
        }
    }

    fn compute(mac: &HmacSha256, message: &[u8]) -> [u8; 32] {
        let mut mac = mac.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    fn next_word(&mut self) -> u32 {
        if self.pos == self.block.len() {
            self.round += 1;
            let message = format!("{}:{}", self.prefix, self.round);
            self.block = Self::compute(&self.mac, message.as_bytes());
            self.pos = 0;
        }
        let word = u32::from_be_bytes([
            self.block[self.pos],
            self.block[self.pos + 1],
            self.block[self.pos + 2],
            self.block[self.pos + 3],
        ]);
        self.pos += 4;
        word
    }

    /// Uniform in `0..n` (n >= 1) by rejection.
    fn uniform(&mut self, n: u32) -> u32 {
        let span = 1u64 << 32;
        let limit = span - span % u64::from(n);
        loop {
            let w = u64::from(self.next_word());
            if w < limit {
                return (w % u64::from(n)) as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn easy() -> DifficultySettings {
        DifficultySettings::new("EASY", 30, 3)
    }

    #[test]
    fn derivation_is_deterministic_and_in_range() {
        let d = DifficultySettings::new("HARD", 22, 7);
        let a = derive_hazards("server", "client", 7, &d).unwrap();
        assert_eq!(a, derive_hazards("server", "client", 7, &d).unwrap());
        assert_eq!(a.len(), 7);
        assert!(
            a.windows(2).all(|w| w[0] < w[1]),
            "sorted and distinct: {a:?}"
        );
        assert!(a.iter().all(|&c| c < 22));
        assert_ne!(a, derive_hazards("server", "client", 8, &d).unwrap());
        assert_ne!(a, derive_hazards("server2", "client", 7, &d).unwrap());
    }

    #[test]
    fn first_block_is_the_hmac_of_client_seed_and_nonce() {
        // Independent check of step 1-3 for one hazard: the first word of
        // HMAC-SHA256(S, "C:N") decides it (30 columns: limit rejects almost nothing).
        let mut mac = HmacSha256::new_from_slice(b"S").unwrap();
        mac.update(b"C:5");
        let block = mac.finalize().into_bytes();
        let w = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
        let d = DifficultySettings::new("ONE", 30, 1);
        let limit = (1u64 << 32) - (1u64 << 32) % 30;
        if u64::from(w) < limit {
            assert_eq!(derive_hazards("S", "C", 5, &d).unwrap(), vec![w % 30]);
        }
    }

    #[test]
    fn hazards_are_spread_evenly() {
        // 30 columns, 3 hazards, 30_000 rounds: each column is hit 3_000 times on average.
        let d = easy();
        let mut hits = [0u32; 30];
        for nonce in 0..30_000 {
            for c in derive_hazards("spread", "check", nonce, &d).unwrap() {
                hits[c as usize] += 1;
            }
        }
        for (column, &h) in hits.iter().enumerate() {
            assert!((2_700..3_300).contains(&h), "column {column}: {h}");
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert!(matches!(
            derive_hazards("", "c", 0, &easy()),
            Err(HazardError::EmptySeed("server seed"))
        ));
        assert!(matches!(
            derive_hazards("s", "", 0, &easy()),
            Err(HazardError::EmptySeed("client seed"))
        ));
        assert!(matches!(
            derive_hazards("s", "c", -1, &easy()),
            Err(HazardError::NegativeNonce(-1))
        ));
        assert!(matches!(
            derive_hazards("s", "c", 0, &DifficultySettings::new("X", 5, 5)),
            Err(HazardError::TooManyHazards { .. })
        ));
    }

    #[test]
    fn seeds_and_hashes_are_hex() {
        let seed = new_server_seed();
        assert_eq!(seed.len(), 64);
        assert_ne!(seed, new_server_seed());
        assert_eq!(
            hash_seed("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
