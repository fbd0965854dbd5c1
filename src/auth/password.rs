//! Password hashing (Argon2id) and constant-time comparison.

use std::fmt;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params};

use super::AuthConfigError;

/// Hashing a password failed (the OS random source or the hasher refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashPasswordError {
    reason: String,
}

impl fmt::Display for HashPasswordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot hash password: {}", self.reason)
    }
}

impl std::error::Error for HashPasswordError {}

/// Hashes `password` with Argon2id (the crate's recommended default cost) and a
/// fresh random salt, as a PHC string for a user's `password_hash`.
pub fn hash_password(password: &str) -> Result<String, HashPasswordError> {
    hash_with(&Argon2::default(), password)
}

pub(super) fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, HashPasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashPasswordError {
            reason: e.to_string(),
        })
}

/// Rejects a hash `verify` could never accept: not PHC, not Argon2, or bad parameters.
pub(super) fn check_phc(username: &str, phc: &str) -> Result<(), AuthConfigError> {
    let hash = PasswordHash::new(phc).map_err(|e| AuthConfigError::InvalidPasswordHash {
        username: username.to_owned(),
        reason: e.to_string(),
    })?;
    let unsupported = || AuthConfigError::UnsupportedPasswordHash {
        username: username.to_owned(),
    };
    Algorithm::try_from(hash.algorithm).map_err(|_| unsupported())?;
    Params::try_from(&hash).map_err(|_| unsupported())?;
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err(unsupported());
    }
    Ok(())
}

/// Whether `password` matches the PHC string `phc` (validated by [`check_phc`]).
/// The parameters come from the hash itself, so old hashes keep working.
pub(super) fn verify(password: &[u8], phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

/// Equality whose running time depends only on `secret.len()`, never on where
/// or whether the bytes differ, nor on `input`'s contents.
pub(super) fn constant_time_eq(secret: &[u8], input: &[u8]) -> bool {
    let mut diff = u8::from(secret.len() != input.len());
    let input_len = input.len().max(1);
    for (i, s) in secret.iter().enumerate() {
        // Wrap around a shorter input instead of stopping: the length check above decides.
        let b = input.get(i % input_len).copied().unwrap_or(0);
        diff |= s ^ b;
    }
    std::hint::black_box(diff) == 0
}
