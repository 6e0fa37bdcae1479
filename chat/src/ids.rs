//! Ids and tokens: random URL-safe text from the system's CSPRNG (run and conversation ids,
//! session and one-time tokens, the forward-auth secret).

use base64::Engine as _;

use crate::Error;

/// Random URL-safe text from `n` bytes of the system's CSPRNG.
pub(crate) fn random(n: usize) -> Result<String, Error> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::Internal("the system random generator failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}
