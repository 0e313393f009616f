//! Signed, expiring tokens naming a user: JWTs signed with HMAC-SHA256 (`HS256`), so any
//! backend holding the deployment's secret can mint them with a stock JWT library.
//! Claims: `sub` (the user id), `exp` (expiry, Unix seconds), `iat`.

use std::path::Path;

use chat_protocol::{ErrorCode, valid_user_id};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated between the gateways of one deployment.
const LEEWAY_S: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: connect with a token from `chat-gateway token --user ID`")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::MISSING_TOKEN,
            AuthError::Expired => ErrorCode::TOKEN_EXPIRED,
            AuthError::Invalid(_) => ErrorCode::INVALID_TOKEN,
        }
    }
}

/// Mints and verifies tokens with one deployment-wide secret.
#[derive(Clone)]
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenAuthority {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_S;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Backends' JWT libraries often add an audience; the gateway does not use one.
        validation.validate_aud = false;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user`, valid for `ttl_s` seconds from now.
    pub fn mint(&self, user: &str, ttl_s: u64) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        self.mint_expiring_at(user, now.saturating_add(ttl_s))
    }

    /// A token for `user` expiring at `exp` (Unix seconds); a past `exp` makes an expired token.
    pub fn mint_expiring_at(&self, user: &str, exp: u64) -> Result<String, AuthError> {
        if !valid_user_id(user) {
            return Err(AuthError::Invalid(format!("invalid user id {user:?}")));
        }
        let claims = Claims {
            sub: user.to_owned(),
            exp,
            iat: jsonwebtoken::get_current_timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// The user a token names, if it is well-formed, signed with our secret and unexpired.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                _ => AuthError::Invalid(e.to_string()),
            })?;
        if !valid_user_id(&data.claims.sub) {
            return Err(AuthError::Invalid(
                "the token names an invalid user id".into(),
            ));
        }
        Ok(data.claims.sub)
    }
}

/// The secret from `<data>/token.secret`, created (random, owner-only) on first use.
/// Safe when several processes (a gateway, `chat-gateway token`) race to create it.
pub fn load_or_create_secret(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join("token.secret");
    if let Some(secret) = read_secret(&path)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(data_dir)?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    match publish_file(&path, secret.as_bytes(), 0o600) {
        Ok(()) => Ok(secret.into_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret(&path)?.ok_or_else(|| std::io::Error::other("token secret vanished"))
        }
        Err(e) => Err(e),
    }
}

fn read_secret(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(secret) => Ok(Some(secret.trim().as_bytes().to_vec())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `path` with `contents` and permissions `mode`, all at once: the file is written
/// aside and linked into place, so no reader sees it half-written and an existing file is
/// never replaced (`AlreadyExists`).
pub(crate) fn publish_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let aside = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let written = options
        .open(&aside)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()));
    let linked = written.and_then(|()| std::fs::hard_link(&aside, path));
    let _ = std::fs::remove_file(&aside);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_names_its_user() {
        let auth = TokenAuthority::new(b"secret");
        let token = auth.mint("alice", 60).unwrap();
        assert_eq!(auth.verify(&token), Ok("alice".to_string()));
    }

    #[test]
    fn forged_expired_malformed_and_missing_tokens_are_refused() {
        let auth = TokenAuthority::new(b"secret");
        let forged = TokenAuthority::new(b"other").mint("alice", 60).unwrap();
        assert_eq!(
            auth.verify(&forged).unwrap_err().code(),
            ErrorCode::INVALID_TOKEN
        );
        let expired = auth
            .mint_expiring_at("alice", jsonwebtoken::get_current_timestamp() - 60)
            .unwrap();
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        assert_eq!(
            auth.verify("not.a.jwt").unwrap_err().code(),
            ErrorCode::INVALID_TOKEN
        );
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn the_secret_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_secret(dir.path()).unwrap(), first);
    }
}
