//! Sizes as Docker and the runbook's compose file write them (`512m`, `2g`, `2Gi`, bytes).

/// Bytes from `1073741824`, `512m`, `512M`, `512mb`, `2g`, `2Gi`, `1.5g`, `100k`, `1t`. Units
/// are binary (1024-based), as Docker's `-m` reads them.
pub fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("{s:?} is not a size: it has no number"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: {number:?} is not a number"))?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0_f64.powi(4),
        other => return Err(format!("{s:?} is not a size: unknown unit {other:?}")),
    };
    let bytes = (value * factor).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as i64)
}

/// `256Mi`, `1.5Gi`, or the bytes when no unit divides it to at most one decimal.
pub fn format_size(bytes: i64) -> String {
    for (unit, factor) in [
        ("Ti", 1i64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= factor {
            let tenths = bytes as f64 / factor as f64 * 10.0;
            if (tenths - tenths.round()).abs() < 1e-9 {
                let v = tenths.round() / 10.0;
                return if v.fract() == 0.0 {
                    format!("{}{unit}", v as i64)
                } else {
                    format!("{v}{unit}")
                };
            }
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_docker_reads_them() {
        for (text, bytes) in [
            ("1073741824", 1 << 30),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("512mb", 512 << 20),
            ("2g", 2 << 30),
            ("2Gi", 2 << 30),
            ("1.5g", 3 << 29),
            ("100k", 100 << 10),
            ("1t", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "m", "-1m", "12x", "1.2.3g", "99999999999t"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_format_with_the_largest_exact_unit() {
        assert_eq!(format_size(256 << 20), "256Mi");
        assert_eq!(format_size(3 << 29), "1.5Gi");
        assert_eq!(format_size(64 << 20), "64Mi");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(1536), "1.5Ki");
    }
}
