//! The National Provider Identifier: ten digits, the last a Luhn check digit computed over
//! the prefix 80840 and the first nine (standards §5.6).

use std::fmt;

/// A syntactically valid NPI (ten digits, check digit correct). Says nothing about
/// whether the NPI is active: that is the directory's business.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Npi([u8; 10]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpiError {
    #[error("an NPI is 10 digits; got {0} characters")]
    Length(usize),
    #[error("an NPI is digits only")]
    NotDigits,
    #[error("NPI check digit is wrong (Luhn over 80840 + the first nine digits)")]
    CheckDigit,
}

impl Npi {
    pub fn parse(s: &str) -> Result<Npi, NpiError> {
        let b = s.trim().as_bytes();
        if b.len() != 10 {
            return Err(NpiError::Length(b.len()));
        }
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(NpiError::NotDigits);
        }
        if check_digit(b[..9].try_into().expect("nine digits")) != b[9] - b'0' {
            return Err(NpiError::CheckDigit);
        }
        let mut a = [0u8; 10];
        a.copy_from_slice(b);
        Ok(Npi(a))
    }

    /// Builds a valid NPI from nine base digits (the synthetic data generator uses it).
    pub fn from_base(base: u32) -> Npi {
        let s = format!("{:09}", base % 1_000_000_000);
        let mut a = [0u8; 10];
        a[..9].copy_from_slice(s.as_bytes());
        a[9] = b'0' + check_digit(a[..9].try_into().expect("nine digits"));
        Npi(a)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ascii digits")
    }
}

/// Luhn over `80840` + nine digits. The prefix contributes 24 once doubled and summed.
fn check_digit(base: &[u8; 9]) -> u8 {
    let mut sum = 24u32;
    for (i, &c) in base.iter().enumerate() {
        let mut d = u32::from(c - b'0');
        // Counting from the right of the 14-digit payload, positions 1, 3, 5... double:
        // those are the 1st, 3rd, ... 9th of the base digits.
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

impl fmt::Display for Npi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Npi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Npi({})", self.as_str())
    }
}

impl std::str::FromStr for Npi {
    type Err = NpiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Npi::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cms_test_vector() {
        assert!(Npi::parse("1234567893").is_ok());
        assert_eq!(Npi::parse("1234567890"), Err(NpiError::CheckDigit));
        assert_eq!(Npi::parse("123456789"), Err(NpiError::Length(9)));
        assert_eq!(Npi::parse("12345678a3"), Err(NpiError::NotDigits));
        // Real NPIs from the NPPES sample.
        assert!(Npi::parse("1497758544").is_ok());
        assert!(Npi::parse("1427051648").is_ok());
    }

    /// The sum-mod-10-is-zero check digit: the copy-paste bug (10 - 0 = 10) must not bite.
    #[test]
    fn check_digit_zero() {
        let n = (0..1000)
            .map(Npi::from_base)
            .find(|n| n.as_str().ends_with('0'));
        assert!(n.is_some());
    }

    /// Independent formulation: the standard Luhn check over the 15-digit 80840 form.
    fn luhn_ok(digits: &str) -> bool {
        let sum: u32 = digits
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, c)| {
                let d = u32::from(c - b'0');
                if i % 2 == 1 {
                    let x = d * 2;
                    if x > 9 {
                        x - 9
                    } else {
                        x
                    }
                } else {
                    d
                }
            })
            .sum();
        sum.is_multiple_of(10)
    }

    proptest! {
        #[test]
        fn agrees_with_full_luhn(n in 0u64..10_000_000_000u64) {
            let s = format!("{n:010}");
            prop_assert_eq!(Npi::parse(&s).is_ok(), luhn_ok(&format!("80840{s}")));
        }

        #[test]
        fn generated_npis_are_valid(base in 0u32..1_000_000_000u32) {
            let npi = Npi::from_base(base);
            prop_assert!(Npi::parse(npi.as_str()).is_ok());
        }
    }
}
