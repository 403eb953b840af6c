//! A content digest that can only hold a valid value, so whatever a registry or a bundle
//! calls a digest is parsed before it goes near a URL, a path or a comparison.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;
use std::str::FromStr;

use super::error::{Error, Result};

use crate::text::printable;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Digest {
    /// `sha256:<64 hex>` or `sha512:<128 hex>`, lower case, nothing else. oci-spec
    /// checks the grammar; of its algorithms only the two we can hash are accepted.
    pub fn parse(input: &str) -> Result<Digest> {
        let invalid = |why: String| {
            Err(Error::Invalid(format!(
                "'{}' is not a digest: {why}",
                printable(input)
            )))
        };
        let Some((algorithm, _)) = input.split_once(':') else {
            return invalid("expected sha256:<64 hex digits>".into());
        };
        let length = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return invalid("algorithm must be sha256 or sha512".into()),
        };
        if oci_spec::image::Digest::from_str(input).is_err() {
            return invalid(format!("{algorithm} needs {length} lower-case hex digits"));
        }
        Ok(Digest(input.to_string()))
    }

    pub fn of_sha256(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn algorithm(&self) -> Algorithm {
        if self.0.starts_with("sha512:") {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        }
    }

    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, hex)| hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A hasher of this digest's own algorithm, for checking streamed content.
    pub fn hasher(&self) -> Hasher {
        match self.algorithm() {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Whether `bytes` hash to this digest, with its own algorithm.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let mut hasher = self.hasher();
        hasher.update(bytes);
        hasher.finish() == *self
    }

    /// Twelve hex digits, for tables.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest(format!("sha256:{}", hex::encode(h.finalize()))),
            Hasher::Sha512(h) => Digest(format!("sha512:{}", hex::encode(h.finalize()))),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(value: String) -> Result<Digest> {
        Digest::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_well_formed_digests() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().as_str(), good);
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            format!(
                "sha256:{}/../../other/repo/manifests/latest",
                "a".repeat(64)
            ),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{}", "a".repeat(64)),
            format!("md5:{}", "a".repeat(32)),
            "sha256".to_string(),
            String::new(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "accepted {bad:?}");
        }
        let err = Digest::parse("sha256:\x1b[31mred").unwrap_err().to_string();
        assert!(!err.contains('\x1b'), "{err}");
    }

    #[test]
    fn checks_content_with_its_own_algorithm() {
        let sha256 = Digest::of_sha256(b"hello");
        assert!(sha256.matches(b"hello"));
        assert!(!sha256.matches(b"hellO"));
        let sha512 =
            Digest::parse(&format!("sha512:{}", hex::encode(Sha512::digest(b"hello")))).unwrap();
        assert!(sha512.matches(b"hello"));
        assert!(!sha512.matches(b"other bytes"));
        let json = serde_json::to_string(&sha256).unwrap();
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sha256);
        assert!(serde_json::from_str::<Digest>("\"sha256:../x\"").is_err());
    }
}
