//! LEB128 varints and zigzag signed integers, bounds-checked on read.

use thiserror::Error;

/// A varint that runs off the end of its buffer or past 64 bits.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("bad varint")]
pub struct VarintError;

/// Appends `v` as an unsigned LEB128 varint (1..=10 bytes).
#[inline]
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded, so small negative numbers stay short.
#[inline]
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads an unsigned varint from the front of `buf`, advancing it.
#[inline]
pub fn get_u64(buf: &mut &[u8]) -> Result<u64, VarintError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(VarintError)?;
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(VarintError);
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(VarintError)
}

/// Reads a zigzag-encoded signed varint.
#[inline]
pub fn get_i64(buf: &mut &[u8]) -> Result<i64, VarintError> {
    let u = get_u64(buf)?;
    Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_values_are_one_byte() {
        let mut out = Vec::new();
        put_u64(&mut out, 127);
        put_i64(&mut out, -64);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn overlong_and_truncated_are_errors() {
        assert_eq!(get_u64(&mut &[0x80u8, 0x80][..]), Err(VarintError));
        assert_eq!(get_u64(&mut &[0xffu8; 10][..]), Err(VarintError));
        let mut max = Vec::new();
        put_u64(&mut max, u64::MAX);
        assert_eq!(get_u64(&mut &max[..]), Ok(u64::MAX));
    }

    proptest! {
        #[test]
        fn roundtrip(u in any::<u64>(), i in any::<i64>()) {
            let mut out = Vec::new();
            put_u64(&mut out, u);
            put_i64(&mut out, i);
            let mut r = &out[..];
            prop_assert_eq!(get_u64(&mut r), Ok(u));
            prop_assert_eq!(get_i64(&mut r), Ok(i));
            prop_assert!(r.is_empty());
        }
    }
}
