//! Numbers as text without `core::fmt`: the browser bundle writes a few
//! integers, and `fmt`'s machinery would cost it kilobytes for them.

use crate::prelude::*;

/// Writes `n`'s decimal digits at the end of `buf`; returns where they start.
fn digits(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

/// Writes `n` in decimal at the end of `buf` and returns those digits.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let i = digits(n, buf);
    // Only ASCII digits were written.
    core::str::from_utf8(&buf[i..]).unwrap_or_default()
}

/// Writes `n` in decimal to a formatter (for hand-written `Display`s).
pub fn write_decimal(f: &mut core::fmt::Formatter<'_>, n: u64) -> core::fmt::Result {
    f.write_str(decimal(n, &mut [0; 20]))
}

/// Appends `n` in decimal, digit by digit: `decimal`'s `from_utf8` costs
/// the browser bundle more than this.
pub fn push_decimal(out: &mut String, n: u64) {
    let mut buf = [0; 20];
    let i = digits(n, &mut buf);
    for &d in &buf[i..] {
        out.push(char::from(d));
    }
}

/// Appends the low byte of `n` as two lowercase hex digits.
pub fn push_hex_byte(out: &mut String, n: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(DIGITS[usize::from(n >> 4)] as char);
    out.push(DIGITS[usize::from(n & 15)] as char);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_matches_display() {
        for n in [0, 7, 10, 99, 100, 4_294_967_295, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string());
        }
    }

    #[test]
    fn hex_byte_matches_display() {
        for n in [0u8, 9, 10, 0x1f, 0xff] {
            let mut s = String::new();
            push_hex_byte(&mut s, n);
            assert_eq!(s, format!("{n:02x}"));
        }
    }
}
