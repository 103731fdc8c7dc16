//! Stream identifiers and sequence numbers. A [`StreamId`] is a 48-bit millisecond
//! timestamp followed by 100 bits from the operating system's CSPRNG, rendered as 30
//! characters of lowercase Crockford base32 (`0-9a-z` without `i l o u`), so ids are
//! URL-safe, unguessable, and sort as text in the order they were created. Parsing is
//! strict: anything that [`StreamId::to_string`] could not have produced is an error.

use std::fmt;
use std::str::FromStr;

use rand::TryRngCore;

/// Position of a record in its stream: 1 for the first record, 0 for "before the first".
pub type Seq = u64;

/// The Crockford base32 alphabet in lowercase; ASCII order equals digit order, so the
/// text of fixed-width ids sorts like their numeric value.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters for the timestamp (10 × 5 = 50 bits, the top two always zero).
const TIME_CHARS: usize = 10;
/// Characters for the random part (20 × 5 = 100 bits).
const RANDOM_CHARS: usize = 20;
/// Length of the textual form.
pub const STREAM_ID_LEN: usize = TIME_CHARS + RANDOM_CHARS;
const TIME_BITS: u32 = 48;
const RANDOM_BITS: u32 = 100;

/// Identifier of one stream: time-ordered and unguessable.
///
/// ```
/// use streamlog::StreamId;
/// let id = StreamId::new();
/// let text = id.to_string();
/// assert_eq!(text.len(), 30);
/// assert_eq!(text.parse::<StreamId>().unwrap(), id);
/// assert!("not-an-id".parse::<StreamId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds since the Unix epoch (< 2^48).
    millis: u64,
    /// 100 random bits (< 2^100).
    random: u128,
}

/// Why a text is not a valid [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseStreamIdError {
    /// The text does not have exactly [`STREAM_ID_LEN`] bytes.
    #[error("stream id must be {STREAM_ID_LEN} characters, got {0}")]
    Length(usize),
    /// A character outside the lowercase Crockford base32 alphabet.
    #[error("stream id contains an invalid character at position {0}")]
    Character(usize),
    /// The timestamp part does not fit in 48 bits.
    #[error("stream id timestamp out of range")]
    Timestamp,
}

impl StreamId {
    /// A fresh id for the current system time.
    pub fn new() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::with_millis(millis)
    }

    /// A fresh id with the given timestamp (milliseconds since the Unix epoch, truncated
    /// to 48 bits) and 100 fresh random bits from the OS CSPRNG.
    pub fn with_millis(millis: u64) -> Self {
        let mut bytes = [0u8; 16];
        if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
            // The OS source failing is close to impossible on Linux; the thread RNG is a
            // CSPRNG seeded from the same source, so ids stay unguessable.
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        }
        let random = u128::from_le_bytes(bytes) & ((1u128 << RANDOM_BITS) - 1);
        Self {
            millis: millis & ((1u64 << TIME_BITS) - 1),
            random,
        }
    }

    /// The creation timestamp in milliseconds since the Unix epoch.
    pub fn millis(&self) -> u64 {
        self.millis
    }

    fn encode(&self) -> [u8; STREAM_ID_LEN] {
        let mut out = [0u8; STREAM_ID_LEN];
        for (i, slot) in out[..TIME_CHARS].iter_mut().enumerate() {
            let shift = 5 * (TIME_CHARS - 1 - i);
            *slot = ALPHABET[((self.millis >> shift) & 31) as usize];
        }
        for (i, slot) in out[TIME_CHARS..].iter_mut().enumerate() {
            let shift = 5 * (RANDOM_CHARS - 1 - i);
            *slot = ALPHABET[((self.random >> shift) & 31) as usize];
        }
        out
    }
}

impl Default for StreamId {
    fn default() -> Self {
        Self::new()
    }
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'z' => ALPHABET[10..]
            .iter()
            .position(|&a| a == c)
            .and_then(|p| u8::try_from(p + 10).ok()),
        _ => None,
    }
}

impl FromStr for StreamId {
    type Err = ParseStreamIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != STREAM_ID_LEN {
            return Err(ParseStreamIdError::Length(bytes.len()));
        }
        let mut millis = 0u64;
        for (i, &c) in bytes[..TIME_CHARS].iter().enumerate() {
            let d = digit(c).ok_or(ParseStreamIdError::Character(i))?;
            millis = (millis << 5) | u64::from(d);
        }
        if millis >> TIME_BITS != 0 {
            return Err(ParseStreamIdError::Timestamp);
        }
        let mut random = 0u128;
        for (i, &c) in bytes[TIME_CHARS..].iter().enumerate() {
            let d = digit(c).ok_or(ParseStreamIdError::Character(TIME_CHARS + i))?;
            random = (random << 5) | u128::from(d);
        }
        Ok(Self { millis, random })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.encode();
        // The alphabet is ASCII, so this never fails.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

impl serde::Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_by_time() {
        let a = StreamId::with_millis(1_000);
        let b = StreamId::with_millis(1_001);
        let max = StreamId::with_millis(u64::MAX);
        for id in [a, b, max] {
            assert_eq!(id.to_string().parse::<StreamId>().unwrap(), id);
        }
        assert!(a.to_string() < b.to_string());
        assert!(a < b);
        assert!(b.to_string() < max.to_string());
    }

    #[test]
    fn two_ids_in_the_same_millisecond_differ() {
        assert_ne!(StreamId::with_millis(5), StreamId::with_millis(5));
    }

    #[test]
    fn rejects_malformed_text() {
        let good = StreamId::new().to_string();
        assert!(matches!(
            "".parse::<StreamId>(),
            Err(ParseStreamIdError::Length(0))
        ));
        assert!(matches!(
            good[1..].parse::<StreamId>(),
            Err(ParseStreamIdError::Length(29))
        ));
        let upper = good.to_uppercase();
        if upper != good {
            assert!(upper.parse::<StreamId>().is_err());
        }
        for bad in ['i', 'l', 'o', 'u', '-', '/', 'é'] {
            let mut s = good.clone();
            s.replace_range(12..13, &bad.to_string());
            assert!(s.parse::<StreamId>().is_err(), "{s}");
        }
        // Top bits of the timestamp must be zero.
        let mut s = good.clone();
        s.replace_range(0..1, "8");
        assert_eq!(s.parse::<StreamId>(), Err(ParseStreamIdError::Timestamp));
        // Multi-byte input of the right byte length never panics.
        let weird = "é".repeat(15);
        assert!(weird.parse::<StreamId>().is_err());
    }
}
