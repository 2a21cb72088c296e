//! Telnyx webhook signatures: Ed25519 over the bytes
//! `"{telnyx-timestamp}|{raw body}"`, base64 in `telnyx-signature-ed25519`,
//! checked with the account's public key (`webhooks.public_key`, base64 of
//! the raw 32 bytes). A timestamp further than the tolerance from now is
//! refused too, so a captured event cannot be replayed later.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};

/// The headers Telnyx signs with.
pub const SIGNATURE_HEADER: &str = "telnyx-signature-ed25519";
pub const TIMESTAMP_HEADER: &str = "telnyx-timestamp";

/// Why a request is not a genuine, fresh Telnyx event. The cause is for
/// metrics and logs only; the answer never says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A signature or timestamp header is missing or unreadable.
    Headers,
    /// The timestamp is further than the tolerance from now.
    Stale,
    /// The signature does not verify with the key.
    Signature,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Headers => "headers",
            Refusal::Stale => "stale",
            Refusal::Signature => "signature",
        }
    }
}

/// `webhooks.public_key` as a key, or why it is not one.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let raw = STANDARD
        .decode(b64.trim())
        .map_err(|_| "is not base64".to_owned())?;
    let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        format!(
            "decodes to {} bytes, not the 32 of an Ed25519 key",
            raw.len()
        )
    })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "is not a valid Ed25519 public key".to_owned())
}

/// Checks signatures with one public key.
#[derive(Clone)]
pub struct Verifier {
    key: VerifyingKey,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(key: VerifyingKey, tolerance: Duration) -> Self {
        Self { key, tolerance }
    }

    /// Whether `body` was signed by the key at `timestamp` (the header's
    /// text), with `signature` (base64), within the tolerance of `now_secs`.
    pub fn verify(
        &self,
        timestamp: Option<&[u8]>,
        signature: Option<&[u8]>,
        body: &[u8],
        now_secs: u64,
    ) -> Result<(), Refusal> {
        let (Some(ts_raw), Some(sig_raw)) = (timestamp, signature) else {
            return Err(Refusal::Headers);
        };
        let ts_text = std::str::from_utf8(ts_raw).map_err(|_| Refusal::Headers)?;
        let ts: u64 = ts_text.trim().parse().map_err(|_| Refusal::Headers)?;
        let sig_bytes = STANDARD
            .decode(sig_raw.trim_ascii())
            .map_err(|_| Refusal::Headers)?;
        let sig = Signature::from_slice(&sig_bytes).map_err(|_| Refusal::Headers)?;
        if ts.abs_diff(now_secs) > self.tolerance.as_secs() {
            return Err(Refusal::Stale);
        }
        let mut signed = Vec::with_capacity(ts_text.len().saturating_add(1 + body.len()));
        signed.extend_from_slice(ts_text.as_bytes());
        signed.push(b'|');
        signed.extend_from_slice(body);
        self.key
            .verify_strict(&signed, &sig)
            .map_err(|_| Refusal::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sign(k: &SigningKey, ts: &str, body: &[u8]) -> String {
        let mut m = format!("{ts}|").into_bytes();
        m.extend_from_slice(body);
        STANDARD.encode(k.sign(&m).to_bytes())
    }

    fn verifier(k: &SigningKey) -> Verifier {
        let b64 = STANDARD.encode(k.verifying_key().to_bytes());
        Verifier::new(parse_public_key(&b64).unwrap(), Duration::from_secs(300))
    }

    #[test]
    fn a_genuine_signature_verifies_and_anything_else_is_refused() {
        let k = key(7);
        let v = verifier(&k);
        let body = br#"{"data":{"id":"e1"}}"#;
        let sig = sign(&k, "1000", body);
        let ok = |ts: &str, sig: &str, body: &[u8], now| {
            v.verify(Some(ts.as_bytes()), Some(sig.as_bytes()), body, now)
        };
        assert_eq!(ok("1000", &sig, body, 1000), Ok(()));
        assert_eq!(ok("1000", &sig, body, 1300), Ok(()));
        assert_eq!(ok("1000", &sig, body, 700), Ok(()));
        assert_eq!(ok("1000", &sig, body, 1301), Err(Refusal::Stale));
        assert_eq!(ok("1000", &sig, body, 699), Err(Refusal::Stale));
        assert_eq!(
            ok("1000", &sig, br#"{"data":{"id":"e2"}}"#, 1000),
            Err(Refusal::Signature)
        );
        // The timestamp is signed too.
        assert_eq!(ok("1001", &sig, body, 1000), Err(Refusal::Signature));
        let forged = sign(&key(8), "1000", body);
        assert_eq!(ok("1000", &forged, body, 1000), Err(Refusal::Signature));
        assert_eq!(ok("x", &sig, body, 1000), Err(Refusal::Headers));
        assert_eq!(ok("1000", "not base64!", body, 1000), Err(Refusal::Headers));
        assert_eq!(ok("1000", "AAAA", body, 1000), Err(Refusal::Headers));
        assert_eq!(
            v.verify(None, Some(sig.as_bytes()), body, 1000),
            Err(Refusal::Headers)
        );
        assert_eq!(
            v.verify(Some(b"1000"), None, body, 1000),
            Err(Refusal::Headers)
        );
        assert_eq!(
            v.verify(Some(&[0xff, 0xfe]), Some(sig.as_bytes()), body, 1000),
            Err(Refusal::Headers)
        );
    }

    #[test]
    fn public_keys_must_be_32_bytes_of_base64() {
        let good = STANDARD.encode(key(1).verifying_key().to_bytes());
        assert!(parse_public_key(&good).is_ok());
        assert!(parse_public_key("not base64!").is_err());
        assert!(parse_public_key(&STANDARD.encode([1u8; 31])).is_err());
        assert!(parse_public_key("").is_err());
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let k = key(3);
        let b64 = STANDARD.encode(k.verifying_key().to_bytes());
        let dbg = format!("{:?}", verifier(&k));
        assert!(!dbg.contains(&b64), "{dbg}");
    }
}
