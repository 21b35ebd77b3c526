//! Kubernetes quantities (`resource.Quantity` syntax): a decimal number with an optional
//! binary-SI (`Ki` … `Ei`), decimal-SI (`m`, `k`, `M` … `E`) or exponent (`e6`, `E6`) suffix, as
//! the bandwidth annotations carry them (`10M`, `1.5G`, `500k`, `100Mi`, `1e9`).

/// Parses `s` to an integer, rounding a fractional result up (as Kubernetes rounds quantities
/// to their integer value). Errors say what is wrong with the text.
pub fn parse_integer(s: &str) -> Result<u128, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty quantity".into());
    }
    let body_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(body_end);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
        return Err(format!("{s:?} is not a number with an optional suffix"));
    }
    let (base, exp): (u128, u32) = match suffix {
        "" => (10, 0),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        "Ki" => (2, 10),
        "Mi" => (2, 20),
        "Gi" => (2, 30),
        "Ti" => (2, 40),
        "Pi" => (2, 50),
        "Ei" => (2, 60),
        "m" => return scaled(s, int, frac, 1, 1000),
        e if e.starts_with(['e', 'E']) && e.len() > 1 => {
            let n: u32 = e[1..]
                .parse()
                .map_err(|_| format!("{s:?}: bad exponent {e:?}"))?;
            if n > 30 {
                return Err(format!("{s:?} is too large"));
            }
            (10, n)
        }
        other => {
            return Err(format!(
                "{s:?}: unknown suffix {other:?} (k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei, m or eN)"
            ));
        }
    };
    scaled(s, int, frac, base.pow(exp), 1)
}

/// `int.frac × mul / div`, rounded up.
fn scaled(s: &str, int: &str, frac: &str, mul: u128, div: u128) -> Result<u128, String> {
    let too_large = || format!("{s:?} is too large");
    if int.len() + frac.len() > 30 {
        return Err(too_large());
    }
    let digits: u128 = format!("{int}{frac}").parse().unwrap_or(0);
    let den = 10u128.pow(frac.len() as u32) * div;
    let num = digits.checked_mul(mul).ok_or_else(too_large)?;
    Ok(num.div_ceil(den))
}

#[cfg(test)]
mod tests {
    use super::parse_integer as p;

    #[test]
    fn suffixes() {
        assert_eq!(p("10M"), Ok(10_000_000));
        assert_eq!(p("1G"), Ok(1_000_000_000));
        assert_eq!(p("500k"), Ok(500_000));
        assert_eq!(p("100Mi"), Ok(100 << 20));
        assert_eq!(p("1.5G"), Ok(1_500_000_000));
        assert_eq!(p("1e9"), Ok(1_000_000_000));
        assert_eq!(p("2E3"), Ok(2000));
        assert_eq!(p("12345"), Ok(12345));
        assert_eq!(p("+7k"), Ok(7000));
        assert_eq!(p("1500m"), Ok(2));
        assert_eq!(p(".5k"), Ok(500));
    }

    #[test]
    fn refusals_say_why() {
        assert!(p("").unwrap_err().contains("empty"));
        assert!(p("-10M").unwrap_err().contains("negative"));
        assert!(p("10Mbps").unwrap_err().contains("unknown suffix"));
        assert!(p("ten").unwrap_err().contains("not a number"));
        assert!(p("1.2.3M").unwrap_err().contains("not a number"));
        assert!(p("1e99").unwrap_err().contains("too large"));
        assert!(p("99999999999999999999999999999999E").is_err());
    }
}
