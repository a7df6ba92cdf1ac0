//! DynamoDB numbers: exact decimals of up to 38 significant digits, magnitude 1E-130 to 9.99E+125.
//!
//! A number is kept in a canonical form (no leading or trailing zeros), so `1`, `1.0` and `01`
//! are the same key, the same set member and the same value, and ordering is numeric.

use std::cmp::Ordering;
use std::fmt;

use crate::error::ApiError;

/// DynamoDB's precision limit.
const MAX_DIGITS: usize = 38;
/// Largest and smallest decimal exponents of the first significant digit.
const MAX_EXPONENT: i64 = 125;
const MIN_EXPONENT: i64 = -130;

/// An exact decimal: `(-1)^neg × 0.d₁d₂…dₙ × 10^exp`, zero when `digits` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Number {
    neg: bool,
    /// Significant digits (0–9), most significant first; no leading or trailing zeros.
    digits: Vec<u8>,
    exp: i64,
}

impl Number {
    /// Parses the wire form (`"-12.50"`, `"1e3"`, `"+.5"`), validating DynamoDB's limits.
    pub fn parse(text: &str) -> Result<Number, ApiError> {
        let invalid = || {
            ApiError::validation(format!(
                "The parameter cannot be converted to a numeric value: {text}"
            ))
        };
        let bytes = text.trim().as_bytes();
        let (neg, rest) = match bytes.first() {
            Some(b'-') => (true, &bytes[1..]),
            Some(b'+') => (false, &bytes[1..]),
            _ => (false, bytes),
        };
        let (mantissa, exponent) = match rest.iter().position(|b| *b == b'e' || *b == b'E') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let mut digits = Vec::with_capacity(mantissa.len());
        let mut int_digits: i64 = 0;
        let mut seen_point = false;
        for &b in mantissa {
            match b {
                b'0'..=b'9' => {
                    digits.push(b - b'0');
                    if !seen_point {
                        int_digits += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => return Err(invalid()),
            }
        }
        if digits.is_empty() {
            return Err(invalid());
        }
        let exp_value: i64 = match exponent {
            None => 0,
            Some(e) => {
                let s = std::str::from_utf8(e).map_err(|_| invalid())?;
                if s.is_empty() || s.len() > 12 {
                    return Err(invalid());
                }
                s.parse::<i64>().map_err(|_| invalid())?
            }
        };
        let number = Number::normalize(neg, digits, int_digits + exp_value);
        number.check_limits()?;
        Ok(number)
    }

    /// Strips leading/trailing zeros: `digits` are the mantissa with the decimal point after
    /// `point` digits.
    fn normalize(neg: bool, mut digits: Vec<u8>, mut point: i64) -> Number {
        let leading = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading);
        point -= leading as i64;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Number {
                neg: false,
                digits,
                exp: 0,
            };
        }
        Number {
            neg,
            digits,
            exp: point,
        }
    }

    fn check_limits(&self) -> Result<(), ApiError> {
        if self.digits.is_empty() {
            return Ok(());
        }
        if self.digits.len() > MAX_DIGITS {
            return Err(ApiError::validation(
                "Attempting to store more than 38 significant digits in a Number",
            ));
        }
        // The first significant digit sits at 10^(exp-1).
        if self.exp - 1 > MAX_EXPONENT {
            return Err(ApiError::validation(
                "Number overflow. Attempting to store a number with magnitude larger than supported range",
            ));
        }
        if self.exp - 1 < MIN_EXPONENT {
            return Err(ApiError::validation(
                "Number underflow. Attempting to store a number with magnitude smaller than supported range",
            ));
        }
        Ok(())
    }

    /// Significant digits, as counted by the item-size rule.
    pub fn significant_digits(&self) -> usize {
        self.digits.len()
    }

    /// Stored size in bytes: one byte per two significant digits, plus one.
    pub fn size(&self) -> usize {
        self.significant_digits().div_ceil(2) + 1
    }

    /// Exact sum, for `ADD` on a number; fails like DynamoDB when the result leaves the range.
    pub fn add(&self, other: &Number) -> Result<Number, ApiError> {
        if self.digits.is_empty() {
            return Ok(other.clone());
        }
        if other.digits.is_empty() {
            return Ok(self.clone());
        }
        // Both as integers × 10^scale, with a common scale.
        let scale_a = self.exp - self.digits.len() as i64;
        let scale_b = other.exp - other.digits.len() as i64;
        let scale = scale_a.min(scale_b);
        let widen = |n: &Number, own: i64| {
            let mut v = n.digits.clone();
            v.extend(std::iter::repeat_n(0, (own - scale) as usize));
            v
        };
        // Bounded: both numbers are within the validated range, so at most ~300 digits.
        let a = widen(self, scale_a);
        let b = widen(other, scale_b);
        let (neg, magnitude) = if self.neg == other.neg {
            (self.neg, add_magnitudes(&a, &b))
        } else {
            match cmp_magnitudes(&a, &b) {
                Ordering::Equal => (false, Vec::new()),
                Ordering::Greater => (self.neg, sub_magnitudes(&a, &b)),
                Ordering::Less => (other.neg, sub_magnitudes(&b, &a)),
            }
        };
        let point = magnitude.len() as i64 + scale;
        let n = Number::normalize(neg, magnitude, point);
        n.check_limits()?;
        Ok(n)
    }
}

/// Compares two big-endian digit strings of natural numbers (no sign).
fn cmp_magnitudes(a: &[u8], b: &[u8]) -> Ordering {
    let a = &a[a.iter().take_while(|d| **d == 0).count()..];
    let b = &b[b.iter().take_while(|d| **d == 0).count()..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn add_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let mut carry = 0u8;
    let (mut i, mut j) = (a.len(), b.len());
    while i > 0 || j > 0 || carry > 0 {
        let mut sum = carry;
        if i > 0 {
            i -= 1;
            sum += a[i];
        }
        if j > 0 {
            j -= 1;
            sum += b[j];
        }
        out.push(sum % 10);
        carry = sum / 10;
    }
    out.reverse();
    out
}

/// `a - b` for `a >= b`.
fn sub_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0i8;
    let mut j = b.len();
    for i in (0..a.len()).rev() {
        let mut d = a[i] as i8 - borrow;
        if j > 0 {
            j -= 1;
            d -= b[j] as i8;
        }
        if d < 0 {
            d += 10;
            borrow = 1;
        } else {
            borrow = 0;
        }
        out.push(d as u8);
    }
    out.reverse();
    out
}

impl Ord for Number {
    fn cmp(&self, other: &Number) -> Ordering {
        let sign = |n: &Number| {
            if n.digits.is_empty() {
                0
            } else if n.neg {
                -1
            } else {
                1
            }
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        // Same sign (and non-zero unless both zero): compare magnitudes, then flip for negatives.
        let magnitude = self
            .exp
            .cmp(&other.exp)
            .then_with(|| self.digits.cmp(&other.digits));
        if self.neg {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Number) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The canonical plain-decimal form (`"-12.5"`, `"1000"`, `"0.001"`), used on the wire.
impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.digits.is_empty() {
            return f.write_str("0");
        }
        let mut s = String::with_capacity(self.digits.len() + 8);
        if self.neg {
            s.push('-');
        }
        let digit = |d: &u8| char::from(b'0' + d);
        let len = self.digits.len() as i64;
        if self.exp <= 0 {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-self.exp) as usize));
            s.extend(self.digits.iter().map(digit));
        } else if self.exp >= len {
            s.extend(self.digits.iter().map(digit));
            s.extend(std::iter::repeat_n('0', (self.exp - len) as usize));
        } else {
            let (int, frac) = self.digits.split_at(self.exp as usize);
            s.extend(int.iter().map(digit));
            s.push('.');
            s.extend(frac.iter().map(digit));
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        Number::parse(s).unwrap()
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(n("1.0"), n("01"));
        assert_eq!(n("1e3").to_string(), "1000");
        assert_eq!(n("-0.0").to_string(), "0");
        assert_eq!(n("0.00120").to_string(), "0.0012");
        assert_eq!(n("-12.50").to_string(), "-12.5");
        assert_eq!(n("+.5").to_string(), "0.5");
        assert_eq!(n("123.456").significant_digits(), 6);
    }

    #[test]
    fn ordering_is_numeric() {
        let mut v = [
            n("10"),
            n("-2"),
            n("0"),
            n("2.5"),
            n("-10"),
            n("0.01"),
            n("9"),
        ];
        v.sort();
        let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        assert_eq!(s, ["-10", "-2", "0", "0.01", "2.5", "9", "10"]);
    }

    #[test]
    fn addition_is_exact() {
        assert_eq!(n("0.1").add(&n("0.2")).unwrap(), n("0.3"));
        assert_eq!(n("10").add(&n("-10.5")).unwrap(), n("-0.5"));
        assert_eq!(n("-3").add(&n("3")).unwrap(), n("0"));
        assert_eq!(n("999").add(&n("1")).unwrap(), n("1000"));
        assert_eq!(
            n("1e10").add(&n("1e-10")).unwrap().to_string(),
            "10000000000.0000000001"
        );
    }

    #[test]
    fn limits_and_garbage() {
        for bad in [
            "", "-", "abc", "1..2", "1e", "e5", "1e+", "--1", "1 2", "0x10",
        ] {
            assert!(Number::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Number::parse(&"1".repeat(39)).is_err());
        assert!(Number::parse("1e126").is_err());
        assert!(Number::parse("9.99e125").is_ok());
        assert!(Number::parse("1e-131").is_err());
        assert!(Number::parse("1e-130").is_ok());
        assert!(Number::parse("1e99999999999999").is_err());
    }
}
