//! Parsing of Kubernetes `resource.Quantity` strings into `f64` base units.
//!
//! This module owns the full quantity grammar of
//! `k8s.io/apimachinery/pkg/api/resource`:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <sign><number>
//! <sign>            ::= "+" | "-"
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>
//! ```
//!
//! Results are in base units: cores for CPU (`250m` = 0.25), bytes for
//! memory (`64Mi` = 67108864). Surrounding ASCII whitespace is ignored (as the
//! JSON decoding of a Quantity does). Values whose magnitude does not fit an
//! `f64` are rejected rather than turned into infinities.

/// Longest quantity string accepted. Real quantities are a few characters;
/// the bound keeps a hostile object from making us scan megabytes.
pub const MAX_QUANTITY_LEN: usize = 128;

/// Longest decimal exponent (in digits) accepted after `e`/`E`.
const MAX_EXPONENT_DIGITS: usize = 6;

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty (after trimming).
    #[error("empty quantity")]
    Empty,
    /// The string is longer than [`MAX_QUANTITY_LEN`].
    #[error("quantity is {0} bytes long; at most {MAX_QUANTITY_LEN} are accepted")]
    TooLong(usize),
    /// No digits where the number should be.
    #[error("quantity {0:?} has no digits")]
    NoDigits(String),
    /// What follows the number is not a known suffix.
    #[error("quantity {0:?} has an unknown suffix {1:?}")]
    BadSuffix(String, String),
    /// The value is too large to represent.
    #[error("quantity {0:?} is out of range")]
    OutOfRange(String),
}

/// Parses a quantity (`250m`, `1.5`, `12345Ki`, `1e3`, `-2Gi`) into base units.
pub fn parse_quantity(input: &str) -> Result<f64, QuantityError> {
    let s = input.trim_matches(|c: char| c.is_ascii_whitespace());
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    if s.len() > MAX_QUANTITY_LEN {
        return Err(QuantityError::TooLong(s.len()));
    }
    let bytes = s.as_bytes();
    let mut pos = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            pos += 1;
            true
        }
        Some(b'+') => {
            pos += 1;
            false
        }
        _ => false,
    };
    let int_start = pos;
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_digits = &s[int_start..pos];
    let mut frac_digits = "";
    if pos < bytes.len() && bytes[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_digits = &s[frac_start..pos];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(QuantityError::NoDigits(s.to_owned()));
    }
    let suffix = &s[pos..];
    let scale = parse_suffix(suffix)
        .ok_or_else(|| QuantityError::BadSuffix(s.to_owned(), suffix.to_owned()))?;

    // Let the standard library do the correctly rounded decimal conversion:
    // "<digits>.<digits>e<exp>" with the decimal exponent folded in.
    let int_part = if int_digits.is_empty() {
        "0"
    } else {
        int_digits
    };
    let frac_part = if frac_digits.is_empty() {
        "0"
    } else {
        frac_digits
    };
    let decimal_exp = match scale {
        Scale::Decimal(e) => e,
        Scale::Binary(_) => 0,
    };
    let text = format!("{int_part}.{frac_part}e{decimal_exp}");
    let magnitude: f64 = text
        .parse()
        .map_err(|_| QuantityError::OutOfRange(s.to_owned()))?;
    let magnitude = match scale {
        Scale::Decimal(_) => magnitude,
        // 2^(10k) is exact in f64; the product rounds once.
        Scale::Binary(k) => magnitude * 2f64.powi(10 * k),
    };
    if !magnitude.is_finite() {
        return Err(QuantityError::OutOfRange(s.to_owned()));
    }
    Ok(if negative { -magnitude } else { magnitude })
}

/// The multiplier a suffix stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// Times 10^n.
    Decimal(i64),
    /// Times 1024^n.
    Binary(i32),
}

fn parse_suffix(suffix: &str) -> Option<Scale> {
    let scale = match suffix {
        "" => Scale::Decimal(0),
        "n" => Scale::Decimal(-9),
        "u" => Scale::Decimal(-6),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        "Ki" => Scale::Binary(1),
        "Mi" => Scale::Binary(2),
        "Gi" => Scale::Binary(3),
        "Ti" => Scale::Binary(4),
        "Pi" => Scale::Binary(5),
        "Ei" => Scale::Binary(6),
        other => {
            let rest = other.strip_prefix(['e', 'E'])?;
            let (negative, digits) = match rest.as_bytes().first() {
                Some(b'-') => (true, &rest[1..]),
                Some(b'+') => (false, &rest[1..]),
                _ => (false, rest),
            };
            if digits.is_empty()
                || digits.len() > MAX_EXPONENT_DIGITS
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let value: i64 = digits.parse().ok()?;
            Scale::Decimal(if negative { -value } else { value })
        }
    };
    Some(scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        if a == b {
            return true;
        }
        let scale = a.abs().max(b.abs());
        (a - b).abs() <= scale * 1e-12
    }

    #[test]
    fn examples_from_the_brief() {
        assert_eq!(parse_quantity("250m"), Ok(0.25));
        assert_eq!(parse_quantity("1500000n"), Ok(0.0015));
        assert_eq!(parse_quantity("2"), Ok(2.0));
        assert_eq!(parse_quantity("1.5"), Ok(1.5));
        assert_eq!(parse_quantity("12345Ki"), Ok(12_641_280.0));
        assert_eq!(parse_quantity("64Mi"), Ok(67_108_864.0));
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert_eq!(parse_quantity("1G"), Ok(1e9));
    }

    #[test]
    fn every_suffix() {
        let cases = [
            ("3n", 3e-9),
            ("3u", 3e-6),
            ("3m", 3e-3),
            ("3", 3.0),
            ("3k", 3e3),
            ("3M", 3e6),
            ("3G", 3e9),
            ("3T", 3e12),
            ("3P", 3e15),
            ("3E", 3e18),
            ("3Ki", 3.0 * 1024.0),
            ("3Mi", 3.0 * 1024f64.powi(2)),
            ("3Gi", 3.0 * 1024f64.powi(3)),
            ("3Ti", 3.0 * 1024f64.powi(4)),
            ("3Pi", 3.0 * 1024f64.powi(5)),
            ("3Ei", 3.0 * 1024f64.powi(6)),
        ];
        for (text, want) in cases {
            let got = parse_quantity(text).unwrap();
            assert!(close(got, want), "{text}: {got} != {want}");
        }
    }

    #[test]
    fn signs_decimals_and_exponents() {
        assert_eq!(parse_quantity("-2"), Ok(-2.0));
        assert_eq!(parse_quantity("+2"), Ok(2.0));
        assert_eq!(parse_quantity("-1.5Gi"), Ok(-1.5 * 1024f64.powi(3)));
        assert_eq!(parse_quantity(".5"), Ok(0.5));
        assert_eq!(parse_quantity("5."), Ok(5.0));
        assert_eq!(parse_quantity("0"), Ok(0.0));
        assert_eq!(parse_quantity("1.5E-2"), Ok(0.015));
        assert_eq!(parse_quantity("1e+3"), Ok(1000.0));
        assert_eq!(parse_quantity("2E3"), Ok(2000.0));
        assert_eq!(parse_quantity("100m"), Ok(0.1));
        assert_eq!(parse_quantity(" 128Mi "), Ok(134_217_728.0));
        assert_eq!(parse_quantity("0.1"), Ok(0.1));
    }

    #[test]
    fn the_exa_suffix_is_not_an_exponent() {
        assert_eq!(parse_quantity("1E"), Ok(1e18));
        assert!(parse_quantity("1e").is_err());
    }

    #[test]
    fn invalid_strings_are_errors() {
        for bad in [
            "",
            " ",
            "m",
            "-",
            "+",
            ".",
            "-.",
            "1.2.3",
            "1x",
            "1 m",
            "1mi",
            "1KI",
            "Ki",
            "1e",
            "1e+",
            "1e1.5",
            "1.5e",
            "1e1234567",
            "--1",
            "1Kib",
            "one",
            "1,5",
            "0x10",
            "1ee3",
            "∞",
            "1\u{0}",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn overflow_is_an_error_not_infinity() {
        assert!(matches!(
            parse_quantity("1e400"),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_quantity("999999Ei9"),
            Err(QuantityError::BadSuffix(..))
        ));
        // Tiny values underflow to zero, which is representable.
        assert_eq!(parse_quantity("1e-400"), Ok(0.0));
    }

    #[test]
    fn long_strings_are_refused() {
        let long = "1".repeat(MAX_QUANTITY_LEN + 1);
        assert_eq!(
            parse_quantity(&long),
            Err(QuantityError::TooLong(MAX_QUANTITY_LEN + 1))
        );
    }

    const SUFFIXES: [(&str, f64); 16] = [
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("", 1.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
    ];

    proptest! {
        #[test]
        fn formatted_numbers_parse_back(
            int in 0u64..10_000_000,
            frac in proptest::option::of(0u32..1000),
            negative in any::<bool>(),
            suffix in 0usize..SUFFIXES.len(),
        ) {
            let (sfx, mult) = SUFFIXES[suffix];
            let number = match frac {
                Some(f) => format!("{int}.{f:03}"),
                None => int.to_string(),
            };
            let text = format!("{}{number}{sfx}", if negative { "-" } else { "" });
            let expect = {
                let base = int as f64 + frac.map_or(0.0, |f| f64::from(f) / 1000.0);
                let v = base * mult;
                if negative { -v } else { v }
            };
            let got = parse_quantity(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(close(got, expect), "{} -> {} (want {})", text, got, expect);
        }

        #[test]
        fn exponent_form_parses_back(mantissa in -1_000_000i64..1_000_000, exp in -30i32..30, upper in any::<bool>()) {
            let text = format!("{mantissa}{}{exp}", if upper { 'E' } else { 'e' });
            let got = parse_quantity(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expect = mantissa as f64 * 10f64.powi(exp);
            prop_assert!(close(got, expect), "{} -> {} (want {})", text, got, expect);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}") {
            let _ = parse_quantity(&s);
        }
    }
}
