//! Identifiers and clock: UUIDv7 ids (time-ordered, so keys and cursors sort by creation) and
//! the millisecond wall clock every record is stamped with.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A UUIDv7 identifier. Stored as 16 big-endian bytes so that keys sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Id(pub uuid::Uuid);

impl Id {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The nil id, reserved for the instance itself (operator-level records).
    pub const NIL: Self = Self(uuid::Uuid::nil());

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        uuid::Uuid::from_slice(bytes).ok().map(Self)
    }
}

impl Default for Id {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for Id {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the Unix epoch, the unit every stored time uses.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 UTC with millisecond precision, the wire format of every time. Written by hand
/// for the years 0000–9999 (every view renders several times, and the general formatter
/// costs about ten times as much); other years go through `time`.
pub fn rfc3339(ms: i64) -> String {
    let (days, of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return rfc3339_by_time(ms);
    }
    let mut b = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut b[0..4], year);
    put_digits(&mut b[5..7], month);
    put_digits(&mut b[8..10], day);
    put_digits(&mut b[11..13], of_day / 3_600_000);
    put_digits(&mut b[14..16], of_day / 60_000 % 60);
    put_digits(&mut b[17..19], of_day / 1000 % 60);
    put_digits(&mut b[20..23], of_day % 1000);
    String::from_utf8(b.to_vec()).unwrap_or_else(|_| rfc3339_by_time(ms))
}

/// Writes `n` (not negative) into `slot` in decimal, zero-padded to the slot's length.
fn put_digits(slot: &mut [u8], mut n: i64) {
    for c in slot.iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01, counted in
/// 400-year eras of 146,097 days that start on 1 March (so the leap day ends a year).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn rfc3339_by_time(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

/// A random 64-bit value from the system's secure generator.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    fill_random(&mut buf);
    u64::from_be_bytes(buf)
}

/// Fills `buf` from the system's secure generator.
pub fn fill_random(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system generator failing means the machine cannot make secrets at all; nothing sane
    // can continue.
    ring::rand::SystemRandom::new().fill(buf).expect("the system random generator failed");
}

/// Lower-case hexadecimal of `bytes` (digests, key ids). A table, not `format!`: every audit
/// record writes two of these, and formatting byte by byte was a tenth of the writer's time.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The value of one hexadecimal digit (either case).
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The 32 bytes of a 64-digit hexadecimal digest, if it is one.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_by_hand_matches_the_general_formatter() {
        // Edges: the epoch, before it, leap days, century rules, the ends of the range.
        let mut cases = vec![
            0,
            -1,
            1,
            86_399_999,
            86_400_000,
            -86_400_000,
            951_782_400_000,     // 2000-02-29
            4_107_542_400_000,   // 2100-03-01
            -2_208_988_800_000,  // 1900-01-01
            -62_167_219_200_000, // 0000-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            -62_135_596_800_001, // 0000-12-31T23:59:59.999
        ];
        // And a spread over the whole range, by a fixed-seed generator.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(-62_167_219_200_000 + (x % 315_569_520_000_000) as i64);
        }
        for ms in cases {
            assert_eq!(rfc3339(ms), rfc3339_by_time(ms), "{ms}");
        }
        // Outside 0000–9999 the general formatter answers.
        assert_eq!(rfc3339(253_402_300_800_000), rfc3339_by_time(253_402_300_800_000));
        assert_eq!(rfc3339(-62_167_219_200_001), rfc3339_by_time(-62_167_219_200_001));
    }

    #[test]
    fn hex_matches_formatting_and_reads_back() {
        let all: Vec<u8> = (0..=255).collect();
        let formatted = all.iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        assert_eq!(hex(&all), formatted);
        let digest: Vec<u8> = (0..32).map(|i| i * 7 + 3).collect();
        assert_eq!(unhex32(&hex(&digest)).map(|d| d.to_vec()), Some(digest.clone()));
        assert_eq!(unhex32(&hex(&digest).to_uppercase()).map(|d| d.to_vec()), Some(digest));
        for bad in ["", "ab", &"g".repeat(64), &format!("+f{}", "0".repeat(62)), &"é".repeat(32)] {
            assert_eq!(unhex32(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = Id::new();
        let b = Id::new();
        assert!(a.as_bytes() < b.as_bytes());
        assert_eq!(a.to_string().parse::<Id>().ok(), Some(a));
    }

    #[test]
    fn rfc3339_is_utc_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
